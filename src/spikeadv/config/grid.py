"""The study grid's names (paper Table III, DESIGN section 2), without torch: the three model kinds and
the controls beside them, the attacks of the grid and which of them take steps, and how a request for
one is validated. The plan, the attacks' registry and the report all read them from here."""

from __future__ import annotations

from ..errors import SpikeAdvError

KINDS = ("ann", "snn1", "snn2")  # the ANN, the converted SNN-I and the spike-trained SNN-II
SNNS = ("snn1", "snn2")
# the controls that isolate spiking (DESIGN section 8.5), targets beside the three kinds: the ANN's weights
# at the point of its training where its validation accuracy is closest to each SNN's, and an ANN of the
# same architecture trained and run on the Poisson rate image at SNN-II's T (input noise, no spikes)
MATCHED = {"ann-acc-i": "snn1", "ann-acc-ii": "snn2"}  # accuracy-matched ANN -> the SNN it matches
MATCH_WITHIN = 2.0  # pp of validation accuracy: a matched ANN further from its SNN's is reported as unmatched
CONTROLS = (*MATCHED, "ann-rate")
TARGETS = (*KINDS, *CONTROLS)
LABEL = {"ann": "ANN", "snn1": "SNN-I", "snn2": "SNN-II",  # the paper's names
         "ann-acc-i": "ANN (SNN-I acc.)", "ann-acc-ii": "ANN (SNN-II acc.)", "ann-rate": "ANN (rate input)"}
STUDY_ATTACKS = ("fgsm", "rfgsm", "ifgsm", "tifgsm", "pgd")  # the attacks of the study's grid
ITERATIVE = ("ifgsm", "tifgsm", "pgd")  # the study's attacks that take a number of steps


def by_eps(results: dict) -> list:
    """A card's ``{eps: result}`` items in increasing eps (JSON keys are strings and sort as text)."""
    return sorted(results.items(), key=lambda item: float(item[0]))


def check(attack: str, eps: float, steps: int) -> None:
    """Validate a study attack request (eps in 1/255 units) with one readable message."""
    if attack not in STUDY_ATTACKS:
        raise SpikeAdvError(f"unknown attack {attack!r} (known: {', '.join(STUDY_ATTACKS)})")
    if not 0 <= eps <= 255:
        raise SpikeAdvError(f"eps is in 1/255 units and must be in [0, 255], got {eps:g}")
    if steps < 1:
        raise SpikeAdvError(f"steps must be >= 1, got {steps}")

# the SNN gradient estimators a study may craft with (spikeadv.attack.estimators registers each)
SNN_GRADIENTS = ("snnadv", "snnadv-clean", "bptt", "bptr", "hart", "assg", "pdsg", "mdse")
