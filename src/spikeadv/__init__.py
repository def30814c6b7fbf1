"""spikeadv: adversarial robustness of spiking neural networks (Sharmin et al.), reproduced and extended.

The Python API (README "Python API"): :class:`Model` (a trained ANN or SNN, from a checkpoint or a
study's run directory), the attacks ``fgsm``, ``rfgsm``, ``ifgsm``, ``pgd`` (eps in pixel units, e.g.
8/255), the gradient sources they take (``source(name, net, snn)``, or ``ann``, ``snnadv``, ``bptt``,
``eot``), ``get_preset`` and ``run`` (the whole study); every mistake a user can fix raises
:class:`SpikeAdvError`. The names are imported on first use, so ``import spikeadv`` stays light.
"""

__version__ = "0.1.0"  # first: submodules import it

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {  # public name -> (module, its name there)
    "Model": ("api", "Model"), "run": ("api", "run"), "get_preset": ("presets", "get_preset"),
    "fgsm": ("attacks", "fgsm"), "rfgsm": ("attacks", "rfgsm"), "ifgsm": ("attacks", "ifgsm"),
    "pgd": ("attacks", "pgd"),
    "Source": ("sources", "Source"), "source": ("sources", "make"), "ann": ("sources", "ann"),
    "snnadv": ("sources", "snnadv"), "bptt": ("sources", "bptt"), "eot": ("sources", "eot"),
    "SpikeAdvError": ("errors", "SpikeAdvError"),
}
__all__ = ["Model", "Source", "SpikeAdvError", "ann", "bptt", "eot", "fgsm", "get_preset", "ifgsm", "pgd", "rfgsm",
           "run", "snnadv", "source"]

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ imports each name when first used
    from .api import Model, run
    from .attacks import fgsm, ifgsm, pgd, rfgsm
    from .errors import SpikeAdvError
    from .presets import get_preset
    from .sources import Source, ann, bptt, eot, snnadv
    from .sources import make as source


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
