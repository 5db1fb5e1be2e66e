"""gRPC channel and server options every EagleEye process uses."""

from __future__ import annotations

# grpcio enables SO_REUSEPORT by default, so a second server on a busy port starts silently and
# steals half the connections; a port clash must be an error instead.
#
# Requests must come uncompressed (gzip or deflate: UNIMPLEMENTED "Compression algorithm 'gzip' is
# disabled.", from the call's headers). gRPC inflates a compressed message on the thread that reads it,
# the event loop's, up to the message limit before it refuses it: 47 KB of gzip held a worker's loop
# 0.1-0.2 s on a 2-core machine. Images are JPEG or PNG, already compressed; raw frames are better sent
# as JPEG than gzipped.
SERVER_BASE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.compression_enabled_algorithms_bitset", 1),  # identity only
)


# Calls one client connection may have open beyond what the process's own limits already allow it
# (health Checks, reflection): see streams_per_connection.
CONNECTION_SPARE_CALLS = 16


def streams_per_connection(calls: int) -> list[tuple[str, int]]:
    """HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS for `calls` (what one client may hold at once by the process's
    own limits) plus CONNECTION_SPARE_CALLS. gRPC keeps state for every call a peer opens, whether or not
    its request ever comes (about 5 KiB each): without a cap a connection may open any number. Past the cap
    a well-behaved client's library waits for one of its calls to end; it is not refused."""
    return [("grpc.max_concurrent_streams", calls + CONNECTION_SPARE_CALLS)]


def connection_cap(connections: int) -> list[tuple[str, int]]:
    """At most `connections` client connections open at once on a server: past it gRPC closes a new one as
    it is accepted (its client sees UNAVAILABLE and reconnects with back-off). A connection costs an open
    file and about 18 KiB of gRPC's memory before any call is made (3,000 idle ones took a router's
    resident memory from 48 to 100 MiB): without a cap one peer could open them until the process ran
    out of files or memory, and then nothing would work, its own connections to workers included."""
    return [("grpc.max_allowed_incoming_connections", connections)]


def message_size_options(max_bytes: int) -> list[tuple[str, int]]:
    """Send/receive limits for messages carrying frames of up to `max_bytes`."""
    return [("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)]
