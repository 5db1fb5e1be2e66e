"""The EagleEye client library: the Detector API with the router's guarantees, in every mode.

    from eagleeye.client import Detector

    with Detector("router.example:50050") as det:          # or "xds:///eagleeye-detector", xds_server=...
        result = det.detect(jpeg_bytes)                     # bytes, an H x W x 3 uint8 array, a PIL image
        for r in det.stream(frames):                        # one result per frame, in order, exactly once
            print(r.frame_id, [(d.label, d.score) for d in r.detections])

`AsyncDetector` is the same for asyncio. Errors are `EagleEyeError` subclasses (client/errors.py).
docs/client.md has the guarantees per mode and a complete ingestion example.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eagleeye.client.aio import AsyncDetector
    from eagleeye.client.dial import Tls
    from eagleeye.client.errors import AccessDenied, EagleEyeError, InvalidImage, Overloaded, ServiceError, Unavailable
    from eagleeye.client.sync import Detector
    from eagleeye.client.types import Box, Detection, Result, Timing

# Loaded on first use, so that importing a module of this package (the CLI's quiet, which must run
# before grpc loads) does not load grpc.
_WHERE = {"AsyncDetector": "aio", "Tls": "dial", "Detector": "sync", "Box": "types", "Detection": "types",
          "Result": "types", "Timing": "types", **dict.fromkeys(
              ("AccessDenied", "EagleEyeError", "InvalidImage", "Overloaded", "ServiceError", "Unavailable"), "errors")}

__all__ = ["AccessDenied", "AsyncDetector", "Box", "Detection", "Detector", "EagleEyeError", "InvalidImage",
           "Overloaded", "Result", "ServiceError", "Timing", "Tls", "Unavailable"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'eagleeye.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"eagleeye.client.{module}"), name)
