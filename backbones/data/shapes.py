"""A small built-in image-classification dataset: procedurally drawn shapes.

Ten shape classes drawn with PIL at random sizes, positions and rotations, in random colours on random backgrounds
(solid, two-colour gradient or blocky noise). Colours are drawn independently of the class, so only the *shape*
carries the label. Every image has its own seed derived from ``(seed, split, index)``, so generation is reproducible
and independent of order. The dataset is written once as an ImageFolder (``root/train/<class>/*.png``,
``root/val/<class>/*.png``) into a cache directory, atomically: it is built in a temporary sibling directory, then
renamed into place, so a crash or a concurrent writer never leaves a half-written dataset at ``root``.
"""
import hashlib
import json
import math
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "VERSION", "default_cache_dir", "draw_shape_image", "make_shapes_dataset", "shapes_dataset_root"]

VERSION = 1
# alphabetical, so a class's index here is its index in an ImageFolder / timm ``class_to_idx``
CLASSES: List[str] = [
    "circle", "cross", "diamond", "hbars", "hexagon", "ring", "square", "star", "triangle", "vbars",
]
MARKER = ".complete.json"
_SS = 2  # supersampling factor (drawn at 2x, downsampled with a box filter: anti-aliased edges)

Color = Tuple[int, int, int]


def default_cache_dir() -> Path:
    """``$BACKBONES_DATA_CACHE`` if set, else ``~/.cache/backbones``."""
    env = os.environ.get("BACKBONES_DATA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "backbones"


def _params(image_size: int, train_per_class: int, val_per_class: int, seed: int) -> dict:
    return {
        "name": "shapes", "version": VERSION, "image_size": int(image_size), "classes": list(CLASSES),
        "train_per_class": int(train_per_class), "val_per_class": int(val_per_class), "seed": int(seed),
    }


def shapes_dataset_root(image_size: int = 64, train_per_class: int = 200, val_per_class: int = 50,
                        seed: int = 0) -> Path:
    """Where :func:`make_shapes_dataset` caches a dataset with these parameters by default."""
    p = _params(image_size, train_per_class, val_per_class, seed)
    digest = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]
    return default_cache_dir() / f"shapes-v{VERSION}-{digest}"


def _image_seed(seed: int, split: str, index: int) -> int:
    h = hashlib.sha256(f"shapes-v{VERSION}:{seed}:{split}:{index}".encode()).digest()
    return int.from_bytes(h[:8], "little")


# ---------------------------------------------------------------------------------------------------------- drawing
def _rand_color(rng: random.Random) -> Color:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _dist(a: Color, b: Color) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _background(rng: random.Random, size: int) -> Tuple[Image.Image, List[Color]]:
    """A random solid, gradient or noise background; returns it and the colours it is made of."""
    kind = rng.randrange(3)
    if kind == 0:
        c = _rand_color(rng)
        return Image.new("RGB", (size, size), c), [c]
    if kind == 1:
        c0, c1 = _rand_color(rng), _rand_color(rng)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)
        ang = rng.uniform(0, 2 * math.pi)
        yy, xx = np.meshgrid(t, t, indexing="ij")
        w = (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang)
        w = (w - w.min()) / max(float(w.max() - w.min()), 1e-6)
        arr = np.asarray(c0, np.float32) * (1 - w[..., None]) + np.asarray(c1, np.float32) * w[..., None]
        return Image.fromarray(arr.round().astype(np.uint8), "RGB"), [c0, c1]
    # blocky noise around a base colour: low-resolution random field upsampled
    base = np.asarray(_rand_color(rng), np.float32)
    cells = rng.choice((4, 8, 16))
    nrng = np.random.default_rng(rng.getrandbits(64))
    noise = nrng.uniform(-50, 50, size=(cells, cells, 3)).astype(np.float32)
    small = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    img = small.resize((size, size), Image.BILINEAR)
    return img, [tuple(int(v) for v in base)]


def _fg_color(rng: random.Random, bg_colors: List[Color]) -> Color:
    """A random colour far enough from every background colour to be visible."""
    best, best_d = None, -1.0
    for _ in range(50):
        c = _rand_color(rng)
        d = min(_dist(c, b) for b in bg_colors)
        if d >= 140:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _rot(points, cx: float, cy: float, ang: float):
    ca, sa = math.cos(ang), math.sin(ang)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]


def _regular(n: int, r: float, phase: float = 0.0):
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _rect(x0: float, y0: float, x1: float, y1: float):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _draw(draw: ImageDraw.ImageDraw, cls: str, cx: float, cy: float, r: float, rng: random.Random, fill: Color):
    """Draw shape ``cls`` of circumradius ~``r`` centred at (cx, cy). Rotations are limited only for the classes
    whose identity depends on orientation (square vs diamond, hbars vs vbars)."""
    deg = math.radians
    if cls == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        return
    if cls == "ring":
        w = r * rng.uniform(0.3, 0.45)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, int(round(w))))
        return
    if cls == "square":
        h = r / math.sqrt(2)
        pts = _rot(_rect(-h, -h, h, h), cx, cy, deg(rng.uniform(-15, 15)))
    elif cls == "diamond":  # a rhombus standing on its tip, taller than wide
        pts = _rot([(0, -r), (0.65 * r, 0), (0, r), (-0.65 * r, 0)], cx, cy, deg(rng.uniform(-15, 15)))
    elif cls == "triangle":
        pts = _rot(_regular(3, r), cx, cy, rng.uniform(0, 2 * math.pi))
    elif cls == "hexagon":
        pts = _rot(_regular(6, r), cx, cy, rng.uniform(0, 2 * math.pi))
    elif cls == "star":
        outer, inner = _regular(5, r, -math.pi / 2), _regular(5, r * 0.4, -math.pi / 2 + math.pi / 5)
        pts = [p for pair in zip(outer, inner) for p in pair]
        pts = _rot(pts, cx, cy, rng.uniform(0, 2 * math.pi))
    elif cls == "cross":
        t = r * rng.uniform(0.22, 0.32)
        ang = rng.uniform(0, 2 * math.pi)
        draw.polygon(_rot(_rect(-r, -t, r, t), cx, cy, ang), fill=fill)
        pts = _rot(_rect(-t, -r, t, r), cx, cy, ang)
    elif cls in ("hbars", "vbars"):
        ang = deg(rng.uniform(-15, 15) + (90 if cls == "vbars" else 0))
        n = 3
        t = r * 2 / (2 * n - 1)  # bar thickness = gap
        half_len = r * 0.95
        for k in range(n - 1):
            y0 = -r + 2 * k * t
            draw.polygon(_rot(_rect(-half_len, y0, half_len, y0 + t), cx, cy, ang), fill=fill)
        y0 = -r + 2 * (n - 1) * t
        pts = _rot(_rect(-half_len, y0, half_len, y0 + t), cx, cy, ang)
    else:  # pragma: no cover - guarded by CLASSES
        raise ValueError(f"unknown shape class {cls!r}")
    draw.polygon(pts, fill=fill)


def draw_shape_image(cls: str, image_seed: int, image_size: int = 64) -> Image.Image:
    """One RGB image of shape ``cls``, fully determined by ``image_seed``."""
    if cls not in CLASSES:
        raise ValueError(f"unknown shape class {cls!r}; expected one of {CLASSES}")
    rng = random.Random(image_seed)
    big = image_size * _SS
    img, bg_colors = _background(rng, big)
    fill = _fg_color(rng, bg_colors)
    r = big * rng.uniform(0.18, 0.4)
    margin = r * 1.02
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    _draw(ImageDraw.Draw(img), cls, cx, cy, r, rng, fill)
    return img.resize((image_size, image_size), Image.BOX)


# ---------------------------------------------------------------------------------------------------------- writing
def _write_split(tmp: Path, split: str, per_class: int, image_size: int, seed: int) -> None:
    for ci, cls in enumerate(CLASSES):
        d = tmp / split / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            index = ci * per_class + i
            img = draw_shape_image(cls, _image_seed(seed, split, index), image_size)
            img.save(d / f"{cls}_{i:05d}.png", format="PNG", optimize=False, compress_level=6)


def _read_marker(root: Path) -> Optional[dict]:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def make_shapes_dataset(root=None, image_size: int = 64, train_per_class: int = 200, val_per_class: int = 50,
                        seed: int = 0) -> Path:
    """Write the shapes dataset once as an ImageFolder and return its root.

    ``root`` defaults to ``shapes_dataset_root(...)`` (under ``$BACKBONES_DATA_CACHE`` or ``~/.cache/backbones``,
    named by a hash of the parameters). If a complete dataset with the same parameters is already there it is
    reused untouched. Otherwise it is generated in a temporary sibling directory and renamed into place; if another
    process finished first, its copy is kept and ours discarded.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError("train_per_class and val_per_class must be >= 1")
    params = _params(image_size, train_per_class, val_per_class, seed)
    root = Path(root).expanduser() if root is not None else shapes_dataset_root(
        image_size, train_per_class, val_per_class, seed)

    def _check_existing() -> bool:
        if not root.exists():
            return False
        marker = _read_marker(root)
        if marker is None:
            if root.is_dir() and not any(root.iterdir()):
                return False  # an empty directory: rename replaces it
            raise FileExistsError(f"{root} exists but is not a complete shapes dataset (no {MARKER}); "
                                  "remove it or choose another root")
        if marker != params:
            raise FileExistsError(f"{root} holds a shapes dataset with different parameters ({marker}); "
                                  f"requested {params}")
        return True

    if _check_existing():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        _write_split(tmp, "train", train_per_class, image_size, seed)
        _write_split(tmp, "val", val_per_class, image_size, seed)
        (tmp / MARKER).write_text(json.dumps(params, sort_keys=True))
        try:
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()
            os.rename(tmp, root)
        except OSError:
            # lost the race to another writer: keep theirs if it is complete and matching
            if not _check_existing():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
