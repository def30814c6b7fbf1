"""Your own models evaluated and compared (``spikeadv.evaluate``, ``spikeadv.compare``, ``spikeadv evaluate
--model``): spikeadv's, a ``torch.nn.Module``, a :class:`spikeadv.TimeLoop` around a SpikingJelly, snnTorch
or Norse SNN, or any function from images in [0, 1] to logits, on your images, with the adaptive
evaluation of :mod:`.units` (every estimator that applies to the model: :mod:`spikeadv.attack.estimators`),
in L-inf or (suite ``l2``) L2.

A model is attacked in eval mode on the images' device and given back in the mode and on the device it
came in; its buffers must not change
(:func:`spikeadv.models.adapters.attacking`). The default eps grid follows the images and the threat
model (:data:`.evaluation.GRIDS`): grey images (MNIST) 0.05 ... 0.3 in L-inf, 0.5 ... 3 in L2; colour images
0.5/255 ... 32/255 in L-inf, 0.1 ... 1 in L2.

Usage::

    card = spikeadv.evaluate(TimeLoop(sj_net, T=4, encoding="poisson"), x, y, suite="quick", name="csnn")
    card = spikeadv.compare({"ann": ann, "snn": TimeLoop(snn, T=8)}, x, y, out="cards/mine")
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from .. import runtime
from ..attack import attacks, estimators
from ..attack import suite as suites
from ..errors import SpikeAdvError
from ..models import adapters
from ..models.foreign import TimeLoop, as_model, identified
from ..models.trained import Trained
from .evaluation import card_meta, custom_suite, default_grid, draws_value, eps_grid
from .units import Evaluation, Setting

Models = Mapping[str, object] | Sequence[object]


@contextmanager
def _placed(model: object, where: torch.device) -> Iterator[object]:
    """``model`` on ``where`` within this block and back on the device it came on afterwards (a module by
    its first parameter or buffer; anything else as it is)."""
    tensors = itertools.chain(model.parameters(), model.buffers()) if isinstance(model, nn.Module) else iter(())
    home = next((t.device for t in tensors), None)
    if home is None:
        yield model
        return
    model.to(where)
    try:
        yield model
    finally:
        model.to(home)


def evaluate_models(models: Models, x: Tensor, y: Tensor, eps: float | Sequence[float] | None = None,
                    suite: str = suites.DEFAULT, pairs: Sequence[str] | None = None, out: str | Path | None = None,
                    seed: int = 0, batch_size: int = 125, draws: int = 32, vote: bool = False,
                    device: torch.device | str | None = None, return_adv: bool | str = False,
                    log: Callable[[str], None] = print) -> tuple[list[dict], Setting, Tensor, Tensor]:
    """The card of each model (named by the mapping's keys, else its own name or model0, model1, ...) on
    the same images, draws and settings, with units cached in ``out`` (None: nothing written); the setting and the images
    on ``device``. ``return_adv``: each card holds the worst-case input per image at each eps
    (``card["adversarial"]``); ``"pairs"``: each pair's own too (``card["adversarial_pairs"][eps][pair]``)."""
    if return_adv not in (False, True, "pairs"):
        raise SpikeAdvError(f"return_adv must be True, False or 'pairs', got {return_adv!r}")
    named = dict(models) if isinstance(models, Mapping) else {f"model{i}": m for i, m in enumerate(models)}
    if not named:
        raise SpikeAdvError("give at least one model to evaluate")
    where = runtime.device(device) if device is not None else x.device
    x, y = x.to(where), y.to(where)
    chosen = suites.get(suite)
    chosen = custom_suite(chosen, list(pairs)) if pairs else chosen
    grid = eps_grid(default_grid(x, chosen.norm) if eps is None else eps, chosen.norm)
    setting = Setting(chosen, grid, seed=seed, batch_size=batch_size, draws=draws_value(draws), vote=bool(vote))
    evaluation = Evaluation(setting, x, y, None if out is None else Path(out), log, keep=return_adv)
    cards = []
    with ExitStack() as stack:
        targets = []
        for name, model in named.items():
            target = as_model(stack.enter_context(_placed(model, where)), str(name))
            target = dataclasses.replace(target, label=str(name)) if isinstance(models, Mapping) else target
            if stack.enter_context(adapters.attacking(target.net)):
                log(f"{name} was in train mode: attacked in eval mode (dropout off, batch norm on its running "
                    "statistics), given back in train mode")
            # images, labels, their classes and the model's input shape checked as every attack checks them
            attacks.validate(estimators.Source(str(name), target.net, **estimators.outline(target.net)), x, y, eps=0)
            targets.append(identified(target, x))
        for target in targets:
            cards.append(evaluation.card(target))
            if return_adv:
                cards[-1]["adversarial"] = {f"{e:g}": evaluation.adversarial[(target.sha256, e)] for e in setting.eps}
            if return_adv == "pairs":
                cards[-1]["adversarial_pairs"] = {f"{e:g}": evaluation.by_pair[(target.sha256, e)] for e in setting.eps}
    return cards, setting, x, y


def evaluate_model(model: nn.Module | Callable[[Tensor], Tensor] | Trained, x: Tensor, y: Tensor,
                   eps: float | Sequence[float] | None = None, suite: str = suites.DEFAULT,
                   out: str | Path | None = None, name: str = "model", seed: int = 0, batch_size: int = 125,
                   draws: int = 32, vote: bool = False, log: Callable[[str], None] = print,
                   pairs: Sequence[str] | None = None, device: torch.device | str | None = None,
                   return_adv: bool | str = False) -> dict:
    """The adaptive evaluation of any model (``spikeadv.evaluate``) on images ``x`` with labels ``y`` over
    the eps grid ``eps`` (pixel units like every attack, e.g. 8/255 or (2/255, 8/255); default: by the
    images, :func:`default_grid`), a stochastic model judged on ``draws`` encoder draws per input
    (``vote``: their majority), on ``device`` (default: the images'): its card (:meth:`.units.Evaluation.card`);
    with ``out`` also written there as card.json, card.md, rows.jsonl and a plot, units cached for a
    rerun. ``suite``: ``strong`` (the default, the one that claims a bound), or ``quick`` / ``standard``
    for a cheaper first look; ``pairs``: ``ESTIMATOR/ATTACK[/STEPS]`` instead of the suite's ensemble;
    ``return_adv``: ``card["adversarial"][eps]`` the worst-case input per image (a tensor); ``"pairs"``:
    ``card["adversarial_pairs"][eps][pair]`` each pair's own output too."""
    from . import card as cards  # matplotlib: loaded only when a card is written

    key = model.name if isinstance(model, Trained) and name == "model" else name  # spikeadv's own keeps its name
    found, setting, x, y = evaluate_models({key: model}, x, y, eps, suite, pairs, out, seed, batch_size, draws, vote,
                                           device, return_adv, log)
    if out is not None:
        cards.write(Path(out), found, card_meta(name, setting, x, y))
    return found[0]


def load_factory(spec: str, weights: Path | None = None, T: int | None = None, encoding: str | None = None) -> nn.Module:
    """A model from ``module.path:function`` (the function called with no argument, or with ``T`` and
    ``encoding`` where it takes them), its ``weights`` loaded from a safetensors file or a PyTorch
    state-dict file (read with torch's restricted unpickler, ``weights_only``: tensors and containers,
    never code); wrapped in a :class:`TimeLoop` at ``T`` with ``encoding`` where the factory takes no
    ``T`` itself."""
    path, colon, attr = spec.partition(":")
    if not colon or not path or not attr:
        raise SpikeAdvError(f"--model {spec!r}: expected module.path:function, e.g. mypkg.nets:csnn")
    try:
        factory = getattr(importlib.import_module(path), attr)
    except (ImportError, AttributeError) as e:
        raise SpikeAdvError(f"--model {spec!r}: cannot import it ({e}); is its package installed or on PYTHONPATH?") from None
    given = {k: v for k, v in (("T", T), ("encoding", encoding)) if v is not None}
    takes = inspect.signature(factory).parameters if callable(factory) else {}
    needs = [n for n, q in takes.items() if q.default is q.empty and n not in given
             and q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
    if not callable(factory) or needs:
        raise SpikeAdvError(f"--model {spec!r}: {attr} must be a function callable with no argument (or with T "
                            f"and encoding), " + (f"but it needs {', '.join(needs)}" if needs else "it is not callable"))
    model = factory(**{k: v for k, v in given.items() if k in takes})
    if not isinstance(model, nn.Module):
        raise SpikeAdvError(f"--model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_weights(model, weights)
    if T is not None and "T" not in takes:
        if isinstance(model, TimeLoop):
            raise SpikeAdvError(f"--T: {spec} returns a TimeLoop of its own (T={model.T}); drop --T")
        model = TimeLoop(model, T=T, encoding=encoding or "direct")
    elif encoding is not None and "encoding" not in takes:
        raise SpikeAdvError(f"--encoding {encoding} needs --T (the factory takes neither)")
    return model.eval()


def _load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise SpikeAdvError(f"--weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            state = {k.removeprefix("model."): v for k, v in load_file(str(path)).items()}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: the reader's own words
        raise SpikeAdvError(f"--weights {path}: not a readable safetensors or state-dict file ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SpikeAdvError(f"--weights {path}: holds no state dict (name -> tensor)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SpikeAdvError(f"--weights {path} do not match the model (missing {list(missing)[:3]}, unexpected "
                            f"{list(unexpected)[:3]})")
