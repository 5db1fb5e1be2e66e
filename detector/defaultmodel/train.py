"""Train the embedded default model on generated scenes and export it with torch.export.

    python -m eagleeye.detector.defaultmodel.train --minutes 22 --out detector/defaultmodel/default.pt2

The data is deterministic (scene seeds 0..N-1) and so is the sampling; the budget is time, so a
slower machine takes fewer steps (the committed weights: 1267 steps of batch 32 on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eagleeye.detector.defaultmodel.net import STRIDE, CenterNetLite
from eagleeye.detector.imaging import letterbox
from eagleeye.detector.model import export_model
from eagleeye.scenes import CLASSES, make_scene

INPUT_SIZE = (256, 256)


def build_targets(boxes: np.ndarray, classes: np.ndarray, out_hw: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CenterNet targets: per-class Gaussian heatmap, and size/offset with a mask at each centre."""
    h, w = out_hw
    heat = np.zeros((len(CLASSES), h, w), np.float32)
    size = np.zeros((2, h, w), np.float32)
    off = np.zeros((2, h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w]
    for box, cls in zip(boxes / STRIDE, classes):
        bw, bh = box[2] - box[0], box[3] - box[1]
        if bw <= 0.5 or bh <= 0.5:
            continue
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        sigma = max(0.5, 0.15 * math.sqrt(bw * bh))
        g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
        heat[cls] = np.maximum(heat[cls], g)
        size[:, iy, ix] = (bw, bh)
        off[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = 1.0
    return heat, size, off, mask


def make_dataset(start: int, count: int) -> tuple[np.ndarray, ...]:
    """Letterboxed images (N x 3 x H x W, uint8) and their targets, from scene seeds."""
    out_hw = (INPUT_SIZE[0] // STRIDE, INPUT_SIZE[1] // STRIDE)
    images = np.zeros((count, 3, *INPUT_SIZE), np.uint8)
    heats = np.zeros((count, len(CLASSES), *out_hw), np.float32)
    sizes = np.zeros((count, 2, *out_hw), np.float32)
    offs = np.zeros((count, 2, *out_hw), np.float32)
    masks = np.zeros((count, *out_hw), np.float32)
    for i in range(count):
        scene = make_scene(start + i)
        img, lb = letterbox(scene.image, INPUT_SIZE)
        boxes = scene.boxes * lb.scale + np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], np.float32)
        images[i] = img.transpose(2, 0, 1)
        heats[i], sizes[i], offs[i], masks[i] = build_targets(boxes, scene.classes, out_hw)
        if (i + 1) % 2000 == 0:
            print(f"  generated {i + 1}/{count} scenes", flush=True)
    return images, heats, sizes, offs, masks


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), normalised by object count."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=16000, help="training scenes (seeds 0..N-1)")
    ap.add_argument("--minutes", type=float, default=22.0, help="training time budget")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("default.pt2"))
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    print(f"generating {args.scenes} scenes", flush=True)
    images, heats, sizes, offs, masks = make_dataset(0, args.scenes)
    print(f"generated in {time.monotonic() - t0:.0f} s; training for {args.minutes} min", flush=True)

    model = CenterNetLite(len(CLASSES))
    print(f"parameters: {sum(p.numel() for p in model.parameters())}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60
    rng = np.random.default_rng(0)
    start = time.monotonic()
    step = 0
    while (elapsed := time.monotonic() - start) < budget:
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(elapsed / budget, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, args.scenes, size=args.batch)
        x = torch.from_numpy(images[idx]).float() / 255.0
        t_heat, t_size = torch.from_numpy(heats[idx]), torch.from_numpy(sizes[idx])
        t_off, t_mask = torch.from_numpy(offs[idx]), torch.from_numpy(masks[idx])
        if rng.random() < 0.5:  # horizontal flip: offsets mirror around the cell
            x, t_heat, t_size, t_mask = x.flip(3), t_heat.flip(3), t_size.flip(3), t_mask.flip(2)
            t_off = t_off.flip(3).clone()
            t_off[:, 0] = torch.where(t_mask > 0, 1 - t_off[:, 0], t_off[:, 0])
        heat, size, off = model.raw(x)
        n_obj = t_mask.sum().clamp(min=1)
        m = t_mask.unsqueeze(1)
        loss_heat = focal_loss(heat, t_heat)
        loss_size = (F.l1_loss(size * m, t_size * m, reduction="sum") / n_obj)
        loss_off = (F.l1_loss(off * m, t_off * m, reduction="sum") / n_obj)
        loss = loss_heat + 0.1 * loss_size + loss_off
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} {elapsed:.0f}s lr {lr:.5f} loss {loss.item():.3f} "
                  f"(heat {loss_heat.item():.3f} size {loss_size.item():.3f} off {loss_off.item():.3f})",
                  flush=True)
    model.eval()
    export_model(model, args.out, name="eagleeye-shapes", version="1", classes=CLASSES,
                 input_size=INPUT_SIZE)
    print(f"wrote {args.out} after {step} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
