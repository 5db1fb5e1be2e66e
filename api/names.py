"""Names and limits that clients, routers and workers must agree on, defined once: the Detector
service's full name, the health-check service names (the README's health section says what each
means), the metadata keys beyond the protos, the ORCA load-report names and the message-size limits.

Plain values, so the pure cores (the worker's health evaluator, the router's controller) and the client
library can use them without importing gRPC or each other; a test checks DETECTOR_SERVICE against the
generated descriptor.
"""

from __future__ import annotations

DETECTOR_SERVICE = "eagleeye.detector.v1.Detector"

READINESS = "readiness"    # can take traffic now (also "" and DETECTOR_SERVICE)
LIVENESS = "liveness"      # the process is not wedged: restart it when this fails
HEADROOM = "headroom"      # full performance (worker); a soft signal for the router's weights
REDUNDANCY = "redundancy"  # router only: both backends can serve

READINESS_NAMES: tuple[str, ...] = ("", READINESS, DETECTOR_SERVICE)

# Trailing metadata a worker sets on RESOURCE_EXHAUSTED when its queue is full (the request itself is
# fine): the router, or a zero-hop client, may try another worker. An oversized image is
# RESOURCE_EXHAUSTED without it.
RETRY_ELSEWHERE_KEY = "eagleeye-retry-elsewhere"
RETRY_ELSEWHERE_QUEUE_FULL = "queue-full"
# Trailing metadata of a router's answer when it filled in request defaults (request_defaults): the
# router states whose defaults applied, with how many requests or frames each, e.g. "FAILOVER=1".
REQUEST_DEFAULTS_KEY = "eagleeye-request-defaults"

# ORCA (xds.service.orca.v3): the per-call trailer and the out-of-band stream a worker reports its
# load on, and the named metrics it fills in besides cpu/mem utilisation.
ORCA_TRAILER = "endpoint-load-metrics-bin"
ORCA_OOB_SERVICE = "xds.service.orca.v3.OpenRcaService"
ORCA_OOB_METHOD = "StreamCoreMetrics"
ORCA_QUEUE, ORCA_QUEUE_CAPACITY, ORCA_GPU = "queue", "queue_capacity", "gpu"

MiB = 1024 * 1024
# A worker's default limits on one image (its max_image_bytes and max_image_pixels settings).
DEFAULT_MAX_IMAGE_BYTES = 32 * MiB
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
# What a Frame or DetectRequest carries besides the image (id, knobs, metadata), at most.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# What a client sends and accepts: room for a 4K raw frame (3840 x 2160 x 3 = 24.9 MB) and then some.
CLIENT_MAX_MESSAGE_BYTES = 64 * MiB
