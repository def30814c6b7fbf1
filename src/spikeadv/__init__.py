"""spikeadv: adversarial robustness of spiking neural networks (Sharmin et al.), reproduced and extended."""

__version__ = "0.1.0"
