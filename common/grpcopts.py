"""gRPC channel and server options every EagleEye process uses."""

from __future__ import annotations

# grpcio enables SO_REUSEPORT by default, so a second server on a busy port starts silently and
# steals half the connections; a port clash must be an error instead.
SERVER_BASE_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.so_reuseport", 0),)


def message_size_options(max_bytes: int) -> list[tuple[str, int]]:
    """Send/receive limits for messages carrying frames of up to `max_bytes`."""
    return [("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)]

# Trailing metadata a worker sets on RESOURCE_EXHAUSTED when its queue is full (the request itself is
# fine): the router may try another worker. An oversized image is RESOURCE_EXHAUSTED without it.
RETRY_ELSEWHERE_KEY = "eagleeye-retry-elsewhere"
# Trailing metadata of a router's answer when it filled in request defaults (request_defaults): the
# router states whose defaults applied, with how many requests or frames each, e.g. "FAILOVER=1".
REQUEST_DEFAULTS_KEY = "eagleeye-request-defaults"
RETRY_ELSEWHERE_QUEUE_FULL = "queue-full"
