"""Procedurally generated scenes with known boxes: training data, eval data, synthetic video.

Three classes: a "screen" (a bright panel inside a dark bezel), an ellipse and a triangle, drawn on
noisy colour gradients with distractors (lines, arcs, speckles, stripes) that belong to no class.
Every scene is a pure function of its seed, so eval sets are reproducible by number.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("screen", "ellipse", "triangle")

#: Seeds at or above this are never used for training; `eagleeye eval` draws from here.
HELD_OUT_SEED_BASE = 10_000_000

# Sizes a camera might deliver; the model sees them letterboxed to its input size.
SCENE_SIZES: tuple[tuple[int, int], ...] = ((256, 256), (320, 240), (384, 216), (240, 320), (480, 360))


@dataclass(frozen=True)
class Scene:
    """An RGB image (H x W x 3, uint8) with ground-truth boxes (x0, y0, x1, y1) and class ids."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    c = rng.integers(0, 256, size=3)
    return int(c[0]), int(c[1]), int(c[2])


def _contrasting_color(rng: np.random.Generator, against: np.ndarray) -> tuple[int, int, int]:
    for _ in range(20):
        c = rng.integers(0, 256, size=3)
        if np.abs(c - against).sum() > 150:
            break
    return int(c[0]), int(c[1]), int(c[2])


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    a = rng.integers(0, 256, size=3).astype(np.float32)
    b = rng.integers(0, 256, size=3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xs * np.cos(angle) + ys * np.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    img += rng.normal(0, rng.uniform(2, 12), size=img.shape).astype(np.float32)
    out: np.ndarray = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _draw_distractors(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    for _ in range(int(rng.integers(0, 7))):
        kind = int(rng.integers(0, 3))
        color = _random_color(rng)
        if kind == 0:
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
            draw.line(pts, fill=color, width=int(rng.integers(1, 4)))
        elif kind == 1:
            x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            r = float(rng.uniform(10, 60))
            start = float(rng.uniform(0, 360))
            draw.arc([x - r, y - r, x + r, y + r], start, start + float(rng.uniform(30, 200)),
                     fill=color, width=int(rng.integers(1, 3)))
        else:
            for _ in range(int(rng.integers(5, 30))):
                x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
                s = float(rng.uniform(1, 3))
                draw.rectangle([x, y, x + s, y + s], fill=color)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _place(rng: np.random.Generator, w: int, h: int, bw: float, bh: float,
           taken: list[np.ndarray]) -> np.ndarray | None:
    for _ in range(15):
        x0 = float(rng.uniform(0, max(w - bw, 1.0)))
        y0 = float(rng.uniform(0, max(h - bh, 1.0)))
        box = np.array([x0, y0, x0 + bw, y0 + bh], dtype=np.float32)
        if all(_iou(box, t) < 0.15 for t in taken):
            return box
    return None


def _draw_object(rng: np.random.Generator, draw: ImageDraw.ImageDraw, cls: int, box: np.ndarray,
                 bg: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    if cls == 0:  # screen: dark bezel, bright panel
        bezel = int(rng.integers(0, 50))
        draw.rectangle([x0, y0, x1, y1], fill=(bezel, bezel, bezel + int(rng.integers(0, 10))))
        t = max(2.0, min(x1 - x0, y1 - y0) * float(rng.uniform(0.06, 0.14)))
        panel = _random_color(rng)
        panel = (max(panel[0], 120), max(panel[1], 120), max(panel[2], 140))
        draw.rectangle([x0 + t, y0 + t, x1 - t, y1 - t], fill=panel)
        return box
    color = _contrasting_color(rng, bg)
    if cls == 1:
        draw.ellipse([x0, y0, x1, y1], fill=color)
        return box
    # triangle: one vertex on each of three sides of the box, so the box is tight
    top = (float(rng.uniform(x0, x1)), y0)
    left = (x0, float(rng.uniform(y0 + (y1 - y0) * 0.5, y1)))
    right = (x1, float(rng.uniform(y0 + (y1 - y0) * 0.5, y1)))
    bottom_y = max(left[1], right[1])
    draw.polygon([top, left, right], fill=color)
    return np.array([x0, y0, x1, bottom_y], dtype=np.float32)


def make_scene(seed: int, size: tuple[int, int] | None = None, max_objects: int = 6) -> Scene:
    """Render the scene for `seed` (size (width, height) or one of SCENE_SIZES chosen by the seed)."""
    rng = np.random.default_rng(seed)
    if size is None:
        size = SCENE_SIZES[int(rng.integers(0, len(SCENE_SIZES)))]
    w, h = size
    img = _background(rng, w, h)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    _draw_distractors(rng, draw, w, h)
    scale = min(w, h) / 256.0
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(0, len(CLASSES)))
        side = float(rng.uniform(18, 120)) * scale
        aspect = float(rng.uniform(1.2, 2.0)) if cls == 0 else float(rng.uniform(0.6, 1.6))
        bw, bh = side * np.sqrt(aspect), side / np.sqrt(aspect)
        box = _place(rng, w, h, min(bw, w - 1.0), min(bh, h - 1.0), boxes)
        if box is None:
            continue
        cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
        boxes.append(_draw_object(rng, draw, cls, box, img[min(cy, h - 1), min(cx, w - 1)].astype(int)))
        classes.append(cls)
    return Scene(
        image=np.asarray(pil, dtype=np.uint8).copy(),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.array(classes, dtype=np.int64),
    )


def canary_image() -> np.ndarray:
    """A tiny (64x64) probe image with one clear ellipse: the health canary's input."""
    img = np.full((64, 64, 3), 40, dtype=np.uint8)
    pil = Image.fromarray(img)
    ImageDraw.Draw(pil).ellipse([12, 16, 52, 48], fill=(230, 200, 40))
    return np.asarray(pil, dtype=np.uint8).copy()


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode an RGB uint8 image as JPEG (for clients, tests and training)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    """Encode an RGB uint8 image as PNG (for clients, tests and training)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
