"""Gradient estimators: how grad_x J(x, y) is taken on a model (DESIGN sections 2 and 8, paper IV-D/E).

An estimator builds a :class:`Source`, what an attack sees of a model: ``base(x)``, the image the attack
starts from and stays within eps of, and ``value_and_grad(x, labels, loss)``, the per-image loss, its
gradient and the logits it was taken on (J the cross-entropy unless an attack passes another loss).

- ``ann``: exact backpropagation through the ANN (paper Algorithm 1, ANNAdv).
- ``snnadv``: the paper's Algorithm 2 for SNN sources: X_rate = mean over T of the SNN's Poisson spike
  train of x, attacked on the proxy ANN (the same weights in ANN mode, each layer scaled by its
  threshold). ``snnadv`` (faithful) starts from X_rate, so the rate noise adds to eps; ``snnadv-clean``
  starts from x and stays within eps of it (the ANN-activation proxy of later work), on logits
  standardised per image so that its loss never saturates (:func:`standardised`).
- ``bptt``: through the SNN's time dynamics with a surrogate derivative (any shape and sharpness:
  ``bptt:surrogate=atan,alpha=2``) and the straight-through Poisson encoder.
- ``bptr``: through the rate relation instead of the spike timing (BPTR, Ding et al. 2022; RGA, Bu et
  al. 2023): d rate / d mean current = 1 / V_th where a neuron fired (:class:`..neurons.Spiking.rate_mix`).
- ``hart``: a mix of the rate and temporal paths (after HART, Hao et al. 2024), ``mix`` the rate share.
- ``assg``: BPTT with the Adaptive Sharpness Surrogate Gradient (Wang et al. 2025), ``pdsg``: with the
  potential-dependent surrogate (Lun et al. 2025), both adapting to the membrane during the attack
  (:mod:`.surrogates`); ``mdse``: per image and step the gradient of whichever of several fixed
  surrogates raises the loss most (after MDSE, Xu et al. 2025).
- option ``eot=n`` on any of them: the mean over n draws of the encoder's randomness (EOT).

On an SNN of SpikingJelly, snnTorch or Norse (kind ``foreign``), ``bptt`` with a ``surrogate``, ``assg``,
``pdsg`` and ``mdse`` swap its neurons' surrogate for the attack (:mod:`spikeadv.models.adapters`);
``bptt`` without one is its own autograd, as ``ann``. The rate estimators and SNNAdv need spikeadv's own
network (the whole spike train of a layer, the ANN twin).

Estimators are named by a spec, ``name[:option=value,...]``, e.g. ``bptt:surrogate=sigmoid,alpha=8,eot=4``.

Usage::

    src = make("bptt:surrogate=atan", net, snn, seed=0)
    x_adv = fgsm(src, x, y, eps=8 / 255)
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ..config.spiking import SURROGATES, Spiking
from ..errors import SpikeAdvError
from ..models import adapters
from ..models.foreign import TimeLoop, stochastic
from ..models.network import Network
from ..models.neurons import Derivative, adaptive_surrogate, encode, surrogate_grad
from ..models.trained import Trained
from ..runtime.draws import Draws, Stream
from . import surrogates
from .losses import Loss, cross_entropy


class Step(NamedTuple):
    """One evaluation of a source: per-image ``loss`` and ``logits`` (means over the draws) and the
    ``grad`` of the summed loss with respect to x."""

    loss: Tensor
    grad: Tensor
    logits: Tensor


@dataclass(frozen=True)
class Source:
    """A model as an attack sees it. ``logits`` classifies (for least-likely targets and score-based
    attacks); the gradient of a loss of its logits is averaged over ``draws`` calls of ``logits`` (each
    call of a ``stochastic`` model, one with Poisson input, draws fresh input spikes); ``base`` is the
    image attacks start from; a ``proxy`` (SNNAdv's ANN) computes another function than the model's, so a
    point it misclassifies is no evidence that the model does."""

    name: str
    logits: Callable[[Tensor], Tensor]
    base: Callable[[Tensor], Tensor] = field(default=lambda x: x)
    draws: int = 1
    stochastic: bool = False
    proxy: bool = False
    classes: int | None = None  # the model's classes and image shape [C, H, W], where known without a forward
    shape: tuple[int, ...] | None = None

    def value_and_grad(self, x: Tensor, labels: Tensor, loss: Loss = cross_entropy) -> Step:
        """The per-image ``loss(logits(x), labels)``, the gradient of its sum at ``x`` and the logits,
        each averaged over ``draws`` encoder draws."""
        x = x.detach().requires_grad_(True)
        grad, losses, scores = torch.zeros_like(x), 0.0, 0.0
        with torch.enable_grad():
            for _ in range(self.draws):
                logits = self.logits(x).float()
                value = loss(logits, labels)
                grad += torch.autograd.grad(value.sum(), x)[0]
                losses, scores = losses + value.detach(), scores + logits.detach()
        return Step(losses / self.draws, grad / self.draws, scores / self.draws)

    def grad(self, x: Tensor, labels: Tensor, loss: Loss = cross_entropy) -> Tensor:
        """d sum_i loss_i / dx (the summed cross-entropy by default), averaged over the draws."""
        return self.value_and_grad(x, labels, loss).grad

    @torch.no_grad()
    def scores(self, x: Tensor) -> Tensor:
        """The logits averaged over ``draws`` calls, without gradients (for score-based attacks)."""
        return sum(self.logits(x).float() for _ in range(self.draws)) / self.draws


def ann(net: Network) -> Source:
    """Exact gradient of the ANN (paper eq. 1 as written), or of any classifier of images; one that
    says it is ``stochastic`` (:class:`.external.TimeLoop` on Poisson input) is treated as such."""
    return Source("ann", net, stochastic=stochastic(net), **outline(net))


def outline(net: object) -> dict:
    """What is known of a network's inputs and outputs without running it (spikeadv's own)."""
    return {"classes": net.classes, "shape": net.input_shape} if isinstance(net, Network) else {}


def as_source(source: object) -> Source:
    """What an attack was given, as a :class:`Source`: a source as it is; any other classifier of images
    (a ``torch.nn.Module``, a :class:`spikeadv.TimeLoop`, a function) attacked through its own autograd
    (:func:`ann`); a trained model is refused with the sources it offers, since which one to attack
    through is the researcher's choice."""
    if isinstance(source, Source):
        return source
    if isinstance(source, Trained):
        kind = kind_of(source.net, source.snn)
        offered = ", ".join(n for n, e in ESTIMATORS.items() if kind in e.kinds)
        raise SpikeAdvError(f"an attack takes a gradient source, not the model {source.name}: pass "
                            f"model.source(NAME) with NAME one of {offered}")
    if callable(source):
        return ann(source)
    raise SpikeAdvError(f"an attack takes a gradient source (e.g. model.source('bptt') or spikeadv.ann(net)), "
                        f"got {type(source).__name__}")


def snnadv(net: Network, snn: Spiking, *, seed: int = 0, base: str = "rate") -> Source:
    """Paper Algorithm 2: the proxy ANN (``Network.proxy``) attacked from X_rate = sum_t X_t / T
    (X_t the SNN's input frames: Poisson spikes, or the pixels themselves under direct encoding). With
    Poisson input the attack starts from X_rate and stays within eps of it, so its output is
    not within eps of x (the rate noise adds to eps: up to about 0.8 of the pixel range at T = 6); ``base="clean"``
    (``snnadv-clean``) starts from x and stays within eps of it."""
    if base not in ("rate", "clean"):
        raise SpikeAdvError(f"snnadv base must be rate or clean, got {base!r}")
    if base == "clean":
        return Source("snnadv-clean", lambda x: standardised(net.proxy(x, snn)), proxy=True)
    if snn.encoding == "direct":  # every input frame is the image itself: X_rate = x exactly
        return Source("snnadv", lambda x: net.proxy(x, snn), proxy=True)
    def rate(x: Tensor) -> Tensor:  # one draw per image, the same at every call (a pure function of seed, row)
        with torch.no_grad():
            return encode(x, snn.T, snn.encoding, Draws.of(seed, torch.arange(len(x), device=x.device), 1)).mean(0)

    return Source("snnadv", lambda x: net.proxy(x, snn), rate, proxy=True)


def standardised(logits: Tensor) -> Tensor:
    """Logits divided by their spread per image (a temperature that is not differentiated through): the
    same classes, but a cross-entropy that cannot saturate. The proxy ANN of an SNN can be so confident
    that its cross-entropy's input gradient is exactly zero in float32 (seen: about 15% of images of a
    trained SNN-II left unperturbed by ``snnadv-clean``); on standardised logits every image moves."""
    return logits / logits.detach().float().std(1, keepdim=True).clamp_min(1e-12)


def bptt(net: Network, snn: Spiking, *, seed: int = 0, derivative: Derivative | None = None) -> Source:
    """Backpropagation through time: surrogate derivative at each spike (``snn.surrogate``,
    ``snn.alpha``; ``snn.rate_mix`` > 0 mixes in the rate path; or ``derivative`` of u, one adapting
    during the attack: :mod:`.surrogates`), straight-through encoder. Each call draws fresh input spikes
    from one seeded counter-based stream (:class:`spikeadv.runtime.draws.Stream`), so a run is
    reproducible, and the same on any device and under any chunking of time."""
    stream = Stream(seed)

    def logits(x: Tensor) -> Tensor:
        if derivative is None or not torch.is_grad_enabled():
            return net(x, snn, stream.next(len(x), x.device))
        if isinstance(derivative, surrogates.ASSG):
            derivative.begin(x)
        with adaptive_surrogate(derivative):
            return net(x, snn, stream.next(len(x), x.device))

    return Source("bptt", logits, stochastic=snn.encoding == "poisson")


def eot(source: Source, n: int) -> Source:
    """Expectation over transformation: the mean gradient over ``n`` calls (fresh encoder draws)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise SpikeAdvError(f"eot needs an int n >= 1 of encoder draws, got {n!r}")
    return dataclasses.replace(source, name=f"eot{n}-{source.name}", draws=n)


@dataclass(frozen=True)
class Mixed(Source):
    """MDSE (Xu et al. 2025, "Mixed Dynamic Spiking Estimation"): per image and iterate, the gradient of
    whichever ``candidates`` source (the same SNN, other surrogates) raises the loss most. The authors'
    code keeps the candidate of the largest loss at the current point, but every candidate computes the
    same forward pass, so those losses tie; here each candidate's loss is compared after a trial sign
    step of ``step`` (pixel units; the authors' step 0.01), which is where the surrogates differ. The
    candidates see the same encoder draws (common random numbers): spikeadv's own each from a stream of
    the same seed, a wrapped library SNN's (``loop``, a :class:`TimeLoop`) from its stream rewound."""

    candidates: tuple[Source, ...] = ()
    step: float = 0.01
    loop: TimeLoop | None = None

    def _each(self, fn: Callable, items: list) -> list:
        """``fn`` of every candidate's item, each from the same point of a wrapped SNN's encoder stream."""
        if self.loop is None:
            return [fn(item) for item in items]
        start, out = self.loop.stream.calls, []
        for item in items:
            self.loop.stream.calls = start
            out.append(fn(item))
        return out

    def value_and_grad(self, x: Tensor, labels: Tensor, loss: Loss = cross_entropy) -> Step:
        candidates = [dataclasses.replace(c, draws=self.draws) for c in self.candidates]  # EOT reaches each
        steps = self._each(lambda c: c.value_and_grad(x, labels, loss), candidates)
        with torch.no_grad():
            trial = torch.stack(self._each(lambda cs: loss(cs[0].scores((x + self.step * cs[1].grad.sign()).clamp(0, 1)),
                                                           labels), list(zip(candidates, steps))))
        best = trial.argmax(0).view(-1, *[1] * (x.dim() - 1))
        grad = torch.stack([s.grad for s in steps]).gather(0, best[None].expand(1, *x.shape))[0]
        return Step(steps[0].loss, grad, steps[0].logits)


def mdse(net: Network, snn: Spiking, *, seed: int = 0, step: float = 0.01) -> Source:
    """MDSE over :data:`.surrogates.MDSE_CANDIDATES`, each BPTT on the same encoder draws (one seed)."""
    if not 0 < step <= 1:
        raise SpikeAdvError(f"mdse step (the trial step, pixel units) must be in (0, 1], got {step:g}")
    return _mixed(tuple(bptt(net, _spiking(snn, name, alpha, 0.0), seed=seed)
                        for name, alpha in surrogates.MDSE_CANDIDATES), step)


def _mixed(candidates: tuple[Source, ...], step: float, loop: TimeLoop | None = None) -> Source:
    return Mixed("mdse", candidates[0].logits, stochastic=candidates[0].stochastic, candidates=candidates, step=step,
                 loop=loop)


def _adaptive(a: float, relax: float, beta: float | None, poisson: bool) -> surrogates.ASSG:
    """ASSG with the authors' moment decay: 0.99 on Poisson input, else 0.9, unless ``beta`` is given."""
    return surrogates.ASSG(a, relax, (0.99 if poisson else 0.9) if beta is None else beta)


def _assg(net: Network, snn: Spiking, seed: int, a: float, relax: float, beta: float | None) -> Source:
    return bptt(net, snn, seed=seed, derivative=_adaptive(a, relax, beta, snn.encoding == "poisson"))


def _foreign_bptt(net: Callable[[Tensor], Tensor], surrogate: str | None, alpha: float | None) -> Source:
    """BPTT on a library SNN: ``surrogate`` at ``alpha`` (default :class:`Spiking`'s) swapped in; without
    one, its own autograd."""
    if surrogate is None:
        if alpha is not None:
            raise SpikeAdvError("a wrapped SNN's own surrogate is its library's: name surrogate=... with alpha")
        return ann(net)
    return _swapped(net, functools.partial(surrogate_grad, name=surrogate, alpha=alpha or Spiking.alpha))


def _swapped(net: Callable[[Tensor], Tensor], derivative: Callable[[Tensor], Tensor], stateful: bool = False) -> Source:
    """A library SNN whose neurons backpropagate ``derivative`` (:func:`spikeadv.models.adapters.through`)."""
    return Source("swapped", adapters.through(net, derivative, stateful), stochastic=stochastic(net))


def _foreign_mdse(net: Callable[[Tensor], Tensor], step: float) -> Source:
    """MDSE on a library SNN (on Poisson input every candidate from the same draws of the wrapper)."""
    return _mixed(tuple(_foreign_bptt(net, name, alpha) for name, alpha in surrogates.MDSE_CANDIDATES), step,
                  net if isinstance(net, TimeLoop) else None)


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: the model ``kinds`` it applies to (``ann``, ``snn``: spikeadv's own, or
    ``foreign``: a library SNN), its options with defaults, how it builds a :class:`Source` from (net,
    snn, seed, options) and, for a library SNN, from (net, options) (``foreign``, where it differs), and
    whether it runs the model's encoder (``drawn``: on Poisson input each call draws, so EOT averages
    something)."""

    name: str
    kinds: tuple[str, ...]
    options: dict
    build: Callable[..., Source]
    doc: str
    drawn: bool = True
    foreign: Callable[..., Source] | None = None


KINDS = {"ann": "an ANN", "snn": "a spikeadv SNN", "foreign": "a SpikingJelly, snnTorch or Norse SNN"}


def kind_of(net: object, snn: Spiking | None) -> str:
    """Which estimators a model takes: ``snn`` (spikeadv's SNN), ``foreign`` (a network holding library
    neurons: :func:`spikeadv.models.adapters.neurons`) or ``ann`` (any other classifier)."""
    if snn is not None:
        return "snn"
    return "foreign" if adapters.neurons(net) else "ann"


def _spiking(snn: Spiking, surrogate: str | None, alpha: float | None, mix: float) -> Spiking:
    """The SNN as the deployed model, with the backward pass of an estimator (forward unchanged)."""
    return dataclasses.replace(snn, surrogate=surrogate or snn.surrogate, alpha=alpha or snn.alpha, rate_mix=mix)


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (
    Estimator("ann", ("ann", "foreign"), {}, lambda net, snn, seed: ann(net),
              "exact gradient of the ANN; a library SNN's own autograd"),
    Estimator("snnadv", ("snn",), {}, lambda net, snn, seed: snnadv(net, snn, seed=seed),
              "paper Algorithm 2: proxy ANN from the rate image", drawn=False),
    Estimator("snnadv-clean", ("snn",), {}, lambda net, snn, seed: snnadv(net, snn, seed=seed, base="clean"),
              "proxy ANN (ANN activations) from the clean image", drawn=False),
    Estimator("bptt", ("snn", "foreign"), {"surrogate": None, "alpha": None},
              lambda net, snn, seed, surrogate, alpha: bptt(net, _spiking(snn, surrogate, alpha, 0.0), seed=seed),
              "through time with a surrogate derivative (default: the model's own)", foreign=_foreign_bptt),
    Estimator("bptr", ("snn",), {}, lambda net, snn, seed: bptt(net, _spiking(snn, None, None, 1.0), seed=seed),
              "through the rate relation (BPTR / RGA)"),
    Estimator("hart", ("snn",), {"mix": 0.5, "surrogate": None, "alpha": None},
              lambda net, snn, seed, mix, surrogate, alpha: bptt(net, _spiking(snn, surrogate, alpha, mix), seed=seed),
              "rate and temporal paths mixed (HART-style), mix = rate share"),
    Estimator("assg", ("snn", "foreign"), {"a": 0.425, "relax": 1.5, "beta": None}, _assg,
              "adaptive sharpness surrogate (Wang et al. 2025; pair it with sa-pgd)",
              foreign=lambda net, a, relax, beta: _swapped(net, _adaptive(a, relax, beta, stochastic(net)))),
    Estimator("pdsg", ("snn", "foreign"), {}, lambda net, snn, seed: bptt(net, snn, seed=seed, derivative=surrogates.pdsg),
              "potential-dependent surrogate (Lun et al. 2025)",
              foreign=lambda net: _swapped(net, surrogates.PDSGSteps, stateful=True)),
    Estimator("mdse", ("snn", "foreign"), {"step": 0.01}, lambda net, snn, seed, step: mdse(net, snn, seed=seed, step=step),
              "per image the surrogate whose step raises the loss most (after MDSE, Xu et al. 2025)",
              foreign=_foreign_mdse),
)}


def parse(spec: str) -> tuple[str, dict]:
    """``name[:option=value,...]`` -> (name, options with defaults filled in, ``eot`` included); an
    unknown name, option or value is refused with one line that lists what is known."""
    name, _, rest = spec.strip().partition(":")
    if name not in ESTIMATORS:
        raise SpikeAdvError(f"unknown gradient estimator {name!r} (known: {', '.join(ESTIMATORS)})")
    known = {**ESTIMATORS[name].options, "eot": 1}
    options = dict(known)
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in known:
            raise SpikeAdvError(f"estimator {spec!r}: {item!r} is not one of "
                                f"{', '.join(f'{k}=...' for k in known)}")
        try:
            options[key] = (value if key == "surrogate" else int(value) if key == "eot" else float(value))
        except ValueError:
            raise SpikeAdvError(f"estimator {spec!r}: {key} must be a number, got {value!r}") from None
    if options.get("surrogate") not in (None, *SURROGATES):
        raise SpikeAdvError(f"estimator {spec!r}: unknown surrogate {options['surrogate']!r} "
                            f"(known: {', '.join(SURROGATES)})")
    if options.get("alpha") is not None and not options["alpha"] > 0:
        raise SpikeAdvError(f"estimator {spec!r}: alpha (surrogate sharpness) must be > 0")
    if not 0 <= options.get("mix", 0) <= 1:
        raise SpikeAdvError(f"estimator {spec!r}: mix (the rate share) must be in [0, 1]")
    if not 0 < options.get("a", 0.25) < 0.5:
        raise SpikeAdvError(f"estimator {spec!r}: a (ASSG's bound on gradient vanishing) must be in (0, 0.5)")
    if options.get("relax", 0) < 0 or not 0 <= (options.get("beta") or 0) < 1:
        raise SpikeAdvError(f"estimator {spec!r}: relax must be >= 0 and beta (the moments' decay) in [0, 1)")
    if not 0 < options.get("step", 0.01) <= 1:
        raise SpikeAdvError(f"estimator {spec!r}: step (MDSE's trial step, pixel units) must be in (0, 1]")
    if options["eot"] < 1:
        raise SpikeAdvError(f"estimator {spec!r}: eot must be an int >= 1 of encoder draws")
    return name, options


def applies(spec: str, kind: str) -> bool:
    """Whether estimator ``spec`` applies to a model of ``kind`` (:func:`kind_of`)."""
    return kind in ESTIMATORS[parse(spec)[0]].kinds


def make(spec: str, net: Network, snn: Spiking | None, *, seed: int = 0, eot_n: int = 1) -> Source:
    """A source by estimator spec (:func:`parse`) on a model of any kind (:func:`kind_of`); ``eot_n`` > 1
    (or option ``eot``) averages over encoder draws. A :class:`TimeLoop`'s encoder draws from ``seed``."""
    name, options = parse(spec)
    kind, estimator = kind_of(net, snn), ESTIMATORS[name]
    if not applies(spec, kind):
        raise SpikeAdvError(f"gradient estimator {name!r} does not apply to {KINDS[kind]} "
                            f"(it applies to: {', '.join(KINDS[k] for k in estimator.kinds)})")
    draws = max(eot_n, options.pop("eot"))
    if isinstance(net, TimeLoop):
        net.stream = Stream(seed)
    if kind == "foreign" and estimator.foreign is not None:
        source = estimator.foreign(net, **options)
    else:
        source = estimator.build(net, snn, seed, **options)
    source = dataclasses.replace(source, name=spec.strip(), **outline(net))
    return source if draws == 1 else eot(source, draws)
