"""What each dataset is (DESIGN section 4): shape, classes, normalisation, the SHA-256 of the decoded
arrays per split, and whether a flip keeps an image's class. Plain data, without torch: the presets
validate against it, :mod:`spikeadv.data` prepares and loads what it describes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: image shape (C, H, W), classes, normalisation, official digests per split and
    whether a horizontal flip keeps an image's class (objects: yes; handwritten digits, clothing: no)."""

    name: str
    shape: tuple[int, int, int]
    classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    digests: dict[str, tuple[str, str]] = field(default_factory=dict)  # split -> (images, labels) sha256
    flip: bool = False


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, CIFAR_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        {
            "train": ("9d5c2eddadb0deff02c14c350c0385aab7b1d5ff1edfeb4997c8dc8644960111",
                      "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253"),
            "test": ("177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56",
                     "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
        },
        flip=True,
    ),
    "mnist": DatasetInfo(
        "mnist", (1, 28, 28), 10, tuple(str(i) for i in range(10)), (0.1307,), (0.3081,),
        {
            "train": ("741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
                      "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"),
            "test": ("6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
                     "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
        },
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", (1, 28, 28), 10, FASHION_CLASSES, (0.2860,), (0.3530,),
        {
            "train": ("2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
                      "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7"),
            "test": ("c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
                     "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9"),
        },
    ),
    "synthetic": DatasetInfo("synthetic", (3, 32, 32), 10, tuple(f"class {i}" for i in range(10)),
                             (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), flip=True),
}
DATASETS["synthetic-cifar"] = dataclasses.replace(DATASETS["synthetic"], name="synthetic-cifar")
# generated, not read: images per split (synthetic-cifar: CIFAR-10's sizes, to time a study where the
# real data cannot be brought; timing does not depend on pixel values)
GENERATED = {"synthetic": {"train": 2048, "test": 500}, "synthetic-cifar": {"train": 50_000, "test": 10_000}}
TRAIN_IMAGES = {"cifar10": 50_000, "mnist": 60_000, "fashion-mnist": 60_000,
                **{name: sizes["train"] for name, sizes in GENERATED.items()}}  # official training set sizes
