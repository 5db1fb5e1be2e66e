"""The library's exceptions: one class per failure a caller handles differently.

    EagleEyeError                  the base: catch it to catch them all
    ├── InvalidImage               this image or these knobs will never be answered (fix the input)
    ├── AccessDenied               the service refused who you are (TLS identity, token)
    ├── Overloaded                 every worker that was tried was busy; retry later, or slow down
    ├── Unavailable                no worker answered within the time allowed (retrying may help)
    └── ServiceError               the service failed on its side (an error id to report)

Each carries the gRPC `code` (a grpc.StatusCode) and the service's `details`.
"""

from __future__ import annotations

import grpc


class EagleEyeError(Exception):
    """A call the service did not answer with detections. `code`: the gRPC status code (None when the
    library itself gave up); `details`: the service's message."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class InvalidImage(EagleEyeError):
    """The request cannot be served as it is: not an image, too large, an unknown class, a bad threshold."""


class AccessDenied(EagleEyeError):
    """The service refused the caller (UNAUTHENTICATED, PERMISSION_DENIED)."""


class Overloaded(EagleEyeError):
    """The workers tried were busy (RESOURCE_EXHAUSTED): slow down or retry later."""


class Unavailable(EagleEyeError):
    """No worker answered in time (UNAVAILABLE, DEADLINE_EXCEEDED, or a stream without progress)."""


class ServiceError(EagleEyeError):
    """The service failed (INTERNAL, UNKNOWN, ...): its message names an error id in the service's log."""


_BY_CODE: dict[grpc.StatusCode, type[EagleEyeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidImage,
    grpc.StatusCode.OUT_OF_RANGE: InvalidImage,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidImage,
    grpc.StatusCode.UNAUTHENTICATED: AccessDenied,
    grpc.StatusCode.PERMISSION_DENIED: AccessDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
}

# Codes a new attempt (another worker, a new stream) may get past; the others would be met again.
RETRIABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                       grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def error_for(code: grpc.StatusCode, details: str) -> EagleEyeError:
    """The exception for a status the service answered with."""
    cls = _BY_CODE.get(code, ServiceError)
    return cls(f"{code.name}: {details}" if details else code.name, code, details)


def from_rpc_error(err: grpc.RpcError) -> EagleEyeError:
    """The exception for a failed gRPC call."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return error_for(code, details or "")
