"""A small CenterNet-style detector (~0.5 M parameters) that decodes its top-K boxes in-graph.

Decoding inside the graph keeps the exported program's outputs fixed-shape, which is the model
contract of docs/model-contract.md: float RGB in [0, 1], N x 3 x H x W in; boxes (N x K x 4, x0 y0
x1 y1 in input pixels), scores (N x K) and class indices (N x K, int64) out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 4
TOP_K = 100


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _head(cin: int, cout: int, bias: float = 0.0) -> nn.Sequential:
    last = nn.Conv2d(cin, cout, 1)
    assert last.bias is not None
    nn.init.constant_(last.bias, bias)
    return nn.Sequential(nn.Conv2d(cin, cin, 3, 1, 1), nn.ReLU(inplace=True), last)


class CenterNetLite(nn.Module):
    """Backbone to stride 16, a top-down neck back to stride 4, and heatmap/size/offset heads."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = _conv(3, 16, 2)                                   # /2
        self.s4 = nn.Sequential(_conv(16, 32, 2), _conv(32, 32))      # /4
        self.s8 = nn.Sequential(_conv(32, 64, 2), _conv(64, 64))      # /8
        self.s16 = nn.Sequential(_conv(64, 128, 2), _conv(128, 128), _conv(128, 128))  # /16
        self.lat8 = nn.Conv2d(128, 64, 1)
        self.fuse8 = _conv(64, 64)
        self.lat4 = nn.Conv2d(64, 32, 1)
        self.fuse4 = _conv(32, 32)
        # Heatmap bias starts at p = 0.1 (CenterNet's choice), so early focal loss is stable.
        self.heat = _head(32, num_classes, bias=-2.19)
        self.size = _head(32, 2)
        self.offset = _head(32, 2)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heatmap logits, box sizes (in stride units) and sub-cell offsets at stride 4."""
        x = x - 0.5
        f4 = self.s4(self.stem(x))
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        p8 = self.fuse8(f8 + F.interpolate(self.lat8(f16), scale_factor=2.0, mode="nearest"))
        p4 = self.fuse4(f4 + F.interpolate(self.lat4(p8), scale_factor=2.0, mode="nearest"))
        return self.heat(p4), self.size(p4), self.offset(p4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, size, offset = self.raw(x)
        return decode(heat, size, offset, TOP_K)


def decode(heat_logits: torch.Tensor, size: torch.Tensor, offset: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peak-pick the heatmap (3x3 max-pool NMS) and return the top-k boxes, scores and classes."""
    n, c, h, w = heat_logits.shape
    heat = torch.sigmoid(heat_logits)
    peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat).to(heat.dtype)
    scores, idx = torch.topk(peaks.reshape(n, c * h * w), k)
    classes = torch.div(idx, h * w, rounding_mode="floor")
    pix = idx - classes * (h * w)
    ys = torch.div(pix, w, rounding_mode="floor")
    xs = pix - ys * w
    size_at = torch.gather(size.reshape(n, 2, h * w), 2, pix.unsqueeze(1).expand(n, 2, k))
    off_at = torch.gather(offset.reshape(n, 2, h * w), 2, pix.unsqueeze(1).expand(n, 2, k))
    cx = (xs.to(heat.dtype) + off_at[:, 0]) * STRIDE
    cy = (ys.to(heat.dtype) + off_at[:, 1]) * STRIDE
    bw = size_at[:, 0].clamp(min=0) * STRIDE
    bh = size_at[:, 1].clamp(min=0) * STRIDE
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=2)
    return boxes, scores, classes
