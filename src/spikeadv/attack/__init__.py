"""Attacks and gradient estimators (DESIGN sections 2 and 8): ``estimators`` (how grad J is taken on
a model), ``attacks`` (the paper's FGSM family and PGD), ``apgd`` and ``square`` (adaptive evaluation),
``losses`` (what attacks maximise), ``registry`` (every attack by name under one signature), ``suite``
(the worst case per image over (estimator, attack) pairs), ``checks`` (gradient masking).

An attack is a small unit over a model's gradient source: it knows no study grid and no run directory
(:mod:`spikeadv.study` schedules attacks over those). The grid's names are in :mod:`spikeadv.config.grid`.
"""
