"""How a weight set runs as an SNN (DESIGN section 2): neuron, T, reset, surrogate, encoding. Plain data,
validated on construction, without torch: the presets hold it, the models run it
(:mod:`spikeadv.models.neurons`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpikeAdvError

SURROGATES = ("lee", "fast-sigmoid", "atan", "triangle", "rectangular", "sigmoid")
RESETS = ("subtract", "zero", "signed")
NEURONS = ("if", "lif", "rate")
MAX_T = 65536  # timesteps: 30 times the paper's longest (SNN-I, T = 2000); beyond, one image is hours of CPU


@dataclass(frozen=True)
class Spiking:
    """How a weight set runs as an SNN (DESIGN section 2).

    ``neuron``: ``if`` (SNN-I, no leak), ``lif`` (SNN-II, v <- leak * v + I) or ``rate``: no neuron at all,
    the ANN (ReLU) on the mean of the T encoded input frames, i.e. the input noise of rate coding without
    spikes inside (the noise-matched control, DESIGN section 8.5). ``T`` timesteps;
    ``reset`` by ``subtract`` (default), to ``zero`` or ``signed`` (IF only: spikes taken back, see
    above); the surrogate derivative and its sharpness ``alpha``; input ``encoding`` ``poisson`` (rate
    coding) or ``direct``; ``spike_after_pool``: a
    spiking neuron after each average pooling (the authors' code) or averaged spikes passed on;
    ``chunk``: timesteps folded into one batch per call (0 = as many as the device allows, :func:`spikeadv.runtime.fold`);
    ``v_init``: the membrane potential at t = 0 as a fraction of the threshold (0: the paper; 0.5 halves
    the quantisation error of a converted SNN at small T, Bu et al. 2022); ``rate_mix``: the share of
    the rate path in the backward pass (0: backpropagation through time; 1: through the rate relation
    only, BPTR / RGA; between: a HART-style mix; the forward pass is the same for every value).
    """

    neuron: str = "if"
    T: int = 32
    leak: float = 1.0
    reset: str = "subtract"
    surrogate: str = "fast-sigmoid"
    alpha: float = 4.0
    encoding: str = "poisson"
    spike_after_pool: bool = True
    chunk: int = 0
    v_init: float = 0.0
    rate_mix: float = 0.0

    def __post_init__(self) -> None:
        if self.neuron not in NEURONS:
            raise SpikeAdvError(f"neuron must be one of {', '.join(NEURONS)}, got {self.neuron!r}")
        if isinstance(self.T, bool) or not isinstance(self.T, int) or not 1 <= self.T <= MAX_T:
            raise SpikeAdvError(f"T (timesteps) must be an integer in [1, {MAX_T}], got {self.T!r} (the paper runs "
                                "2000 at most; each timestep is one forward pass of every image)")
        if not 0 < self.leak <= 1:
            raise SpikeAdvError(f"leak must be in (0, 1], got {self.leak}")
        if self.neuron in ("if", "rate") and self.leak != 1:
            raise SpikeAdvError(f"{'IF neurons have' if self.neuron == 'if' else 'the rate model has'} no leak "
                                f"(leak = 1); use neuron=lif for leak {self.leak}")
        if self.reset not in RESETS:
            raise SpikeAdvError(f"reset must be one of {', '.join(RESETS)}, got {self.reset!r}")
        if self.reset == "signed" and self.neuron != "if":
            raise SpikeAdvError("reset=signed (signed spikes) is for converted IF neurons: set neuron=if")
        if self.surrogate not in SURROGATES:
            raise SpikeAdvError(f"unknown surrogate {self.surrogate!r} (known: {', '.join(SURROGATES)})")
        if self.alpha <= 0 or self.chunk < 0:
            raise SpikeAdvError("alpha must be > 0 and chunk >= 0")
        if self.encoding not in ("poisson", "direct"):
            raise SpikeAdvError(f"unknown encoding {self.encoding!r} (known: poisson, direct)")
        if not 0 <= self.v_init < 1:
            raise SpikeAdvError(f"v_init (initial membrane / threshold) must be in [0, 1), got {self.v_init}")
        if not 0 <= self.rate_mix <= 1:
            raise SpikeAdvError(f"rate_mix (the rate path's share of the gradient) must be in [0, 1], got {self.rate_mix}")
