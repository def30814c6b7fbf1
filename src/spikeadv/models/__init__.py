"""The models (DESIGN sections 2 and 5): one weight set from a spec (:mod:`.network`), run as an ANN or
as an SNN through its neurons (:mod:`.neurons`, a plain reference loop) or the fused Triton kernels
(:mod:`.kernels`, tested against the loop); SNN-I by conversion (:mod:`.convert`), the ANN and SNN-II by
training (:mod:`.train`); a trained model loaded with how it runs (:mod:`.trained`) and other
libraries' SNNs wrapped as classifiers (:mod:`.foreign`). Models know nothing of attacks, the study
or the report."""
