"""A hostile gRPC peer written on a raw socket: it opens streams and never reads a byte of their answers.

It announces an HTTP/2 flow-control window of 0, so the server cannot send a single DATA frame on its
streams: every write the server makes to them waits forever. (A grpcio client that merely does not
call read() still lets its transport take up to 64 KiB per stream.) It answers SETTINGS and PING, as a
live peer does, so the server keeps the connection.
"""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
NO_ERROR, ENHANCE_YOUR_CALM = 0x0, 0xB  # GOAWAY codes: a graceful close; "too many pings"
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's default: the largest DATA payload a peer may send


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman coding (lengths < 127)."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def grpc_message(body: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(body)) + body


class StalledPeer:
    """One connection carrying `streams` calls of `path` with request `body`, whose answers it never takes.

    With `body` None the calls send nothing at all and stay open (an idle client stream); otherwise each
    sends `body` `frames` times and half-closes. `source`: the local address to connect from, e.g.
    127.0.0.2 to be another peer than a client on 127.0.0.1 (Linux routes all of 127.0.0.0/8 to the
    loopback interface). The calls the server ends (a refusal, say) are counted in `ended`.
    """

    def __init__(self, address: str, path: str, body: bytes | None, streams: int, frames: int = 1,
                 source: str = "") -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10,
                                             source_address=(source, 0) if source else None)
        self.opened_at = time.monotonic()
        self.goaway_at: float | None = None
        headers = b"".join(_literal(k, v) for k, v in (
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", address),
            ("content-type", "application/grpc"), ("te", "trailers")))
        out = [PREFACE, _frame(SETTINGS, 0, 0, struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 0))]
        for i in range(streams):
            sid = 1 + 2 * i
            out.append(_frame(HEADERS, END_HEADERS, sid, headers))
            if body is not None:
                data = grpc_message(body) * frames
                chunks = [data[i:i + MAX_FRAME] for i in range(0, len(data), MAX_FRAME)]
                out += [_frame(DATA, END_STREAM if i == len(chunks) - 1 else 0, sid, chunk)
                        for i, chunk in enumerate(chunks)]
        self.sock.sendall(b"".join(out))
        self.goaway: int | None = None  # the error code of a GOAWAY the server sent
        self.goaway_seen = threading.Event()
        self.ended: set[int] = set()  # ids of the streams the server ended
        self._ended_changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def open(self) -> bool:
        """Whether the server has kept the connection open (as far as this peer has seen)."""
        return self._thread.is_alive()

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def _serve(self) -> None:
        """Answer SETTINGS and PING (a live peer does); read frames only to find those."""
        self.sock.settimeout(None)
        try:
            while not self._closed:
                head = self._read(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                payload = self._read(length) if length else b""
                if (kind == HEADERS and flags & END_STREAM) or kind == RST_STREAM:
                    with self._ended_changed:
                        self.ended.add(int.from_bytes(head[5:9], "big") & 0x7FFFFFFF)
                        self._ended_changed.notify_all()
                elif kind == SETTINGS and not flags & ACK:
                    self.sock.sendall(_frame(SETTINGS, ACK, 0, b""))
                elif kind == PING and not flags & ACK:
                    self.sock.sendall(_frame(PING, ACK, 0, payload))
                elif kind == GOAWAY:
                    self.goaway = int.from_bytes(payload[4:8], "big")
                    self.goaway_at = time.monotonic()
                    self.goaway_seen.set()
        except OSError:
            pass

    def wait_ended(self, count: int, timeout: float) -> bool:
        """Until the server has ended `count` of the calls; False if it has not within `timeout` s."""
        with self._ended_changed:
            return self._ended_changed.wait_for(lambda: len(self.ended) >= count, timeout)

    def ping(self) -> None:
        """Send a PING (an abusive client sends many)."""
        self.sock.sendall(_frame(PING, 0, 0, b"\0" * 8))

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)


class Relay:
    """A TCP relay on 127.0.0.1 whose connections reach `target` from another local address (`source`,
    e.g. 127.0.0.2): a grpcio client connected through it is another client to the server."""

    def __init__(self, target: str, source: str = "127.0.0.1") -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._source = source
        self.answers = bytearray()  # every byte the server sent, for tests that read the wire
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._target, timeout=10, source_address=(self._source, 0))
            except OSError:
                return
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for a, b, record in ((client, server, None), (server, client, self.answers)):
                threading.Thread(target=self._pump, args=(a, b, record), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while chunk := src.recv(1 << 20):
                if record is not None:
                    with self._lock:
                        record.extend(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self._thread.join(5)


def _hpack_int(data: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 5.1) whose prefix is the low `prefix_bits` of data[at]: (value, next)."""
    limit = (1 << prefix_bits) - 1
    value, at = data[at] & limit, at + 1
    if value < limit:
        return value, at
    shift = 0
    while True:
        byte, at = data[at], at + 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def literal_header_values(wire: bytes, name: str) -> list[bytes]:
    """The values of header `name` sent as literals with a new, plain name (how gRPC sends a value that
    changes per call, e.g. a load report), from raw HTTP/2 bytes; binary ones (-bin) decoded.

    Enough for a test that a header reached the wire, not a general HPACK decoder: a value that was
    Huffman-coded is not read.
    """
    key = name.encode()
    found, at = [], 0
    while (at := wire.find(bytes([len(key)]) + key, at)) >= 0:
        at += 1 + len(key)
        if wire[at] & 0x80:  # Huffman-coded value
            continue
        length, start = _hpack_int(wire, at, 7)
        value = bytes(wire[start:start + length])
        if name.endswith("-bin"):
            # gRPC "true binary" metadata starts with a zero byte; otherwise the value is base64
            value = value[1:] if value[:1] == b"\0" else base64.b64decode(value + b"=" * (-len(value) % 4))
        found.append(value)
    return found
