"""Export a .pt2 model (the embedded default one unless told) to ONNX, for the ONNX Runtime backend.

    python -m eagleeye.detector.export --out model.onnx [--model model.pt2]
    make export-onnx        # rewrites detector/defaultmodel/default.onnx

The ONNX file keeps the model contract: input `images` N x 3 x H x W (N dynamic, 1 to 64), outputs
`boxes`, `scores`, `classes`, and the .pt2 file's `eagleeye.json` in its metadata_props. The export is
checked before it is written: ONNX Runtime's answers on a random batch must match torch's.
Needs torch, onnx and onnxscript (the development install has them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from eagleeye.common.cli import OneLineParser
from eagleeye.detector.contract import META_FILE, ModelError

PROG = "python -m eagleeye.detector.export"
TOLERANCE = 1e-3  # pixels for boxes, probability for scores


def export_onnx(model: Path, out: Path) -> None:
    """Write `model` (.pt2) as ONNX to `out`, with its metadata; ModelError if the result does not match."""
    import onnx
    import torch

    from eagleeye.detector.model import MAX_EXPORT_BATCH
    from eagleeye.detector.onnxmodel import OnnxDetector

    extra = {META_FILE: ""}
    program = torch.export.load(str(model), extra_files=extra)
    meta_text = extra[META_FILE]
    h, w = (int(v) for v in json.loads(meta_text)["input_size"])
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.onnx.export(program, (torch.rand(2, 3, h, w),), dynamo=True,
                                     dynamic_shapes=({0: batch},), input_names=["images"],
                                     output_names=["boxes", "scores", "classes"])
    if exported is None:
        raise ModelError(f"{model}: torch.onnx.export returned no program")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.onnx"
        exported.save(str(staged))
        proto = onnx.load(str(staged))
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_FILE, meta_text
        onnx.save(proto, str(staged))
        check = OnnxDetector(staged, "cpu")
        x = np.random.default_rng(0).integers(0, 256, (4, h, w, 3), dtype=np.uint8)
        with torch.inference_mode():
            ref = program.module()(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
        got = check.infer(x)
        for i, r in enumerate(got):
            if (np.abs(r.boxes - ref[0][i].numpy()).max() > TOLERANCE * max(h, w)
                    or np.abs(r.scores - ref[1][i].numpy()).max() > TOLERANCE
                    or not np.array_equal(r.classes, ref[2][i].numpy())):
                raise ModelError(f"{model}: the ONNX export does not match torch on image {i} of a random batch")
        out.write_bytes(staged.read_bytes())


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, metavar="FILE.pt2", help="the model to export (default: the embedded one)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.onnx")
    args = p.parse_args(argv)
    from eagleeye.detector.defaultmodel import DEFAULT_MODEL_PATH

    try:
        export_onnx(args.model or DEFAULT_MODEL_PATH, args.out)
    except ImportError as e:
        print(f"{PROG}: {e.name} is not installed (the export needs torch, onnx and onnxscript)", file=sys.stderr)
        return 2
    except (ModelError, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
