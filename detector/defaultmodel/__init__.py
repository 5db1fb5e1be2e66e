"""The embedded default model: its scene generator, architecture, training script and weights."""

from pathlib import Path

#: The committed weights, exported with torch.export; reproduce them with `make train-default-model`.
DEFAULT_MODEL_PATH = Path(__file__).with_name("default.pt2")
#: The same model as ONNX, for the ONNX Runtime backend; `make export-onnx` writes it from default.pt2.
DEFAULT_ONNX_PATH = Path(__file__).with_name("default.onnx")
