"""Drawing detections onto images: boxes, class and score, one colour per class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from eagleeye.api.detector.v1 import detector_pb2 as pb
from eagleeye.client.types import Detection

# Distinct on dark and light backgrounds; a class keeps its colour in every image and frame.
_PALETTE = ((255, 56, 56), (72, 209, 255), (255, 196, 0), (120, 255, 80), (214, 102, 255), (255, 128, 196))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def colour(class_id: int) -> tuple[int, int, int]:
    return _PALETTE[class_id % len(_PALETTE)]


def draw(image: Image.Image, detections: Sequence[pb.Detection] | Sequence[Detection]) -> Image.Image:
    """A copy of `image` (RGB) with each detection's box and `label score` drawn on it."""
    out = image.convert("RGB")
    pen = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 200))
    for d in detections:
        box = (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max)
        c = colour(d.class_id)
        pen.rectangle(box, outline=c, width=width)
        text = f"{d.label} {d.score:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text)
        x, y = box[0], max(0.0, box[1] - (bottom - top) - 2)
        pen.rectangle((x, y, x + right - left + 4, y + bottom - top + 2), fill=c)
        pen.text((x + 2, y), text, fill=(0, 0, 0))
    return out


def expand(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a directory stands for its JPEG and PNG files (sorted, not recursive)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out
