"""Configuration as data, without torch (DESIGN sections 2-3 and 5): the presets (:mod:`.presets`), the
paper's network notation (:mod:`.spec`), how a weight set runs as an SNN (:mod:`.spiking`), what each
dataset is (:mod:`.datasets`) and the study grid's names (:mod:`.grid`). The command line, the report
and the run records read them without loading torch."""
