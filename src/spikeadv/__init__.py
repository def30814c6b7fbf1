"""spikeadv: adversarial robustness of spiking neural networks (Sharmin et al.), reproduced and extended.

The Python API (README "Python API"): :class:`Model` (a trained ANN or SNN, from a checkpoint or a
study's run directory), the attacks ``fgsm``, ``rfgsm``, ``ifgsm``, ``pgd``, ``apgd``, ``apgd_t``,
``fab_t``, ``sapgd``, ``square`` (eps in pixel units, e.g. 8/255), ``evaluate`` and ``compare`` (the
adaptive evaluation of your own models, :class:`TimeLoop` around another library's SNN), the gradient sources they take (``source(name, net, snn)``, or ``ann``, ``snnadv``, ``bptt``,
``eot``), ``get_preset`` and ``run`` (the whole study); every mistake a user can fix raises
:class:`SpikeAdvError`. The names are imported on first use, so ``import spikeadv`` stays light.

The package is a house of layers (README "Layout"; the walls are import contracts checked in CI):
``cli`` and ``api`` on top; ``study`` (the grid and the adaptive evaluation over a run directory) beside
``report`` (saved results only, no torch); ``attack`` (estimators and attacks, no grid); ``models``
(networks, neurons and kernels, conversion, training); ``data``; ``runtime`` (the device, chosen once),
``config`` (presets and names, no torch) and ``records`` (files, digests, provenance); ``errors``.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .records.provenance import __version__  # noqa: F401  (spikeadv.__version__)

_EXPORTS = {  # public name -> (module, its name there)
    "Model": ("api", "Model"), "run": ("api", "run"), "get_preset": ("config.presets", "get_preset"),
    "fgsm": ("attack.attacks", "fgsm"), "rfgsm": ("attack.attacks", "rfgsm"), "ifgsm": ("attack.attacks", "ifgsm"),
    "pgd": ("attack.attacks", "pgd"),
    "Source": ("attack.estimators", "Source"), "source": ("attack.estimators", "make"), "ann": ("attack.estimators", "ann"),
    "snnadv": ("attack.estimators", "snnadv"), "bptt": ("attack.estimators", "bptt"), "eot": ("attack.estimators", "eot"),
    "SpikeAdvError": ("errors", "SpikeAdvError"),
    "evaluate": ("study.yours", "evaluate_model"), "compare": ("api", "compare"), "TimeLoop": ("models.foreign", "TimeLoop"),
    "apgd": ("attack.apgd", "apgd"), "apgd_t": ("attack.apgd", "apgd_t"), "fab_t": ("attack.fab", "fab_t"),
    "sapgd": ("attack.sapgd", "sapgd"), "square": ("attack.square", "square"),
}
__all__ = ["Model", "Source", "SpikeAdvError", "TimeLoop", "ann", "apgd", "apgd_t", "bptt", "compare", "eot", "evaluate",
           "fab_t", "fgsm", "get_preset", "ifgsm", "pgd", "rfgsm", "run", "sapgd", "snnadv", "source", "square"]

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ imports each name when first used
    from .api import Model, compare, run
    from .attack.apgd import apgd, apgd_t
    from .attack.attacks import fgsm, ifgsm, pgd, rfgsm
    from .attack.estimators import Source, ann, bptt, eot, snnadv
    from .attack.estimators import make as source
    from .attack.fab import fab_t
    from .attack.sapgd import sapgd
    from .attack.square import square
    from .config.presets import get_preset
    from .errors import SpikeAdvError
    from .models.foreign import TimeLoop
    from .study.yours import evaluate_model as evaluate


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
