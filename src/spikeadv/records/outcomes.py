"""Per-image outcomes of a result row, stored compactly inside JSON (no torch: the report reads them).

A row of ``results.jsonl`` carries, beside its accuracies, which images the target got right
(``correct``: one bit per image, packed, base64) and, for targeted attacks, the class it predicted
(``pred``: one byte per image, base64) and whether that was the attack's target (``hit``: bits); a
stochastic target's correct draws out of K per image (``hits``: one byte each), and every row the true
L-inf (1/255 units) and L2 of each image's perturbation (``linf_image``, ``l2_image``: float16 each). Two
cells on the same images can then be compared image by image (report.paired), and any set of cells
combined per image. 500 images take 84 characters of bits or 668 of classes.
"""

from __future__ import annotations

import base64

import numpy as np


def pack(bits: np.ndarray) -> str:
    """A boolean vector as base64 of its packed bits (big-endian within each byte, zero padded)."""
    return base64.b64encode(np.packbits(np.asarray(bits, dtype=bool)).tobytes()).decode("ascii")


def unpack(text: str, n: int) -> np.ndarray:
    """The first ``n`` bits of :func:`pack`'s output as a boolean vector."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"{len(raw)} bytes of outcomes for {n} images")
    return np.unpackbits(raw)[:n].astype(bool)


def pack_classes(classes: np.ndarray) -> str:
    """Predicted classes (0-255) as base64 of one byte each."""
    values = np.asarray(classes)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError("classes must lie in 0..255 to be stored as one byte each")
    return base64.b64encode(values.astype(np.uint8).tobytes()).decode("ascii")


def unpack_classes(text: str, n: int) -> np.ndarray:
    """The ``n`` classes of :func:`pack_classes`'s output."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    if len(raw) != n:
        raise ValueError(f"{len(raw)} predicted classes for {n} images")
    return raw.astype(np.int64)


def pack_halves(values: np.ndarray) -> str:
    """Per-image numbers (perturbation sizes) as base64 of one float16 each (3 significant digits)."""
    return base64.b64encode(np.asarray(values, dtype="<f2").tobytes()).decode("ascii")


def unpack_halves(text: str, n: int) -> np.ndarray:
    """The ``n`` numbers of :func:`pack_halves`'s output."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<f2")
    if len(raw) != n:
        raise ValueError(f"{len(raw)} numbers for {n} images")
    return raw.astype(np.float64)
