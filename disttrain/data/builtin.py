"""The built-in dataset: coloured shapes as real JPEG files, generated on first use.

It needs no network, is the same on every machine (seeded), and is written in the
image-folder layout `<root>/{train,test}/<class>/*.jpg`, so the first `make run` exercises
the real decode path. Shapes vary in colour, position, scale and rotation over a noisy,
cluttered background: a linear model stays well below what a small CNN reaches, so the
accuracy separates a working trainer from a broken one.

Pure numpy + Pillow: the launcher generates it once before any task starts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross", "ring", "stripes")
IMAGE_SIZE = 32
SPLIT_SIZES = {"train": 600, "test": 100}  # images per class
VERSION = 1
_COMPLETE = "COMPLETE.json"


def default_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache) / "disttrain" / f"builtin-shapes-v{VERSION}"


def ensure_builtin_dataset(root: str | Path | None = None) -> Path:
    """Return the dataset folder, generating it first if it is not complete.

    Generation writes into a temporary sibling and renames it into place, so concurrent
    callers and interrupted runs never leave a half-written dataset behind.
    """
    root = Path(root) if root else default_root()
    if (root / _COMPLETE).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        _generate(scratch)
        try:
            scratch.rename(root)
        except OSError:  # another process finished first, or a stale partial folder
            if not (root / _COMPLETE).is_file():
                shutil.rmtree(root, ignore_errors=True)
                scratch.rename(root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return root


def _generate(root: Path) -> None:
    for split_index, (split, per_class) in enumerate(SPLIT_SIZES.items()):
        rng = np.random.default_rng(1234 + split_index)
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                draw_example(rng, label).save(folder / f"{i:05d}.jpg", quality=90)
    counts = {split: n * len(CLASSES) for split, n in SPLIT_SIZES.items()}
    (root / _COMPLETE).write_text(json.dumps({"classes": CLASSES, "counts": counts}))


def draw_example(rng: np.random.Generator, label: int, size: int = IMAGE_SIZE) -> Image.Image:
    """One image of class `label`: a shape over clutter, with colour and pixel noise."""
    background = rng.integers(0, 256, 3)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 4)):  # clutter: thin lines of random colours
        points = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(points, fill=_random_colour(rng), width=1)
    colour = _contrasting_colour(rng, background)
    radius = rng.uniform(0.18, 0.36) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    _draw_shape(draw, CLASSES[label], cx, cy, radius, rng.uniform(0, math.pi), colour)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    angle: float,
    colour: tuple[int, int, int],
) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif shape == "square":
        draw.polygon(_regular_polygon(cx, cy, r, 4, angle), fill=colour)
    elif shape == "stripes":
        width = max(2, int(r / 3.5))
        dx, dy = r * math.cos(angle), r * math.sin(angle)
        for offset in (-r / 2, r / 2):  # two parallel bars
            ox, oy = -offset * math.sin(angle), offset * math.cos(angle)
            draw.line(
                [(cx - dx + ox, cy - dy + oy), (cx + dx + ox, cy + dy + oy)],
                fill=colour,
                width=width,
            )
    elif shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy, r, 3, angle), fill=colour)
    elif shape == "cross":
        width = max(2, int(r / 2.5))
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=width)


def _regular_polygon(cx: float, cy: float, r: float, sides: int, angle: float):
    return [
        (
            cx + r * math.cos(angle + 2 * math.pi * k / sides),
            cy + r * math.sin(angle + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray):
    """A colour far enough from the background that the shape is visible."""
    while True:
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - background).sum() > 180:
            return tuple(int(c) for c in colour)
