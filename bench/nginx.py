"""nginx as the proxy users would otherwise put in front of two workers: `grpc_pass` to an upstream
with the primary and a `backup` standby, configured as well as open-source nginx allows.

Open-source nginx has no active health checks and never reads gRPC statuses, so what it can do is
passive: a connect error, a reset or a timeout marks the primary failed for `fail_timeout`, and
`grpc_next_upstream` sends the request to the backup if nothing was answered yet. The timeouts are
short (1 s) so that a hung primary is given up on at all; a client with a longer deadline would see
nginx wait 60 s by default.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.cpu import cpu_seconds
from eagleeye.api.names import DETECTOR_SERVICE

CONFIG = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream detectors {{
        server {primary} max_fails=1 fail_timeout=2s;
        server {standby} backup;
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        keepalive_requests 1000000;
        # Large frames: without these a 600 KB raw frame is buffered through small chunks.
        client_max_body_size 0;          # a stream is one request body: a limit would cut long streams
        client_body_buffer_size 1m;
        http2_body_preread_size 1m;
        location /{DETECTOR_SERVICE}/ {{
            grpc_pass grpc://detectors;
            grpc_buffer_size 1m;
            grpc_socket_keepalive on;
            grpc_connect_timeout 1s;
            grpc_read_timeout 1s;
            grpc_send_timeout 1s;
            grpc_next_upstream error timeout non_idempotent;
            grpc_next_upstream_tries 2;
        }}
    }}
}}
"""


def find() -> str | None:
    """The nginx binary, if installed (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def ensure_installed() -> str:
    """The nginx binary; installs the Debian package when it is missing (as `make tools` does)."""
    found = find()
    if found:
        return found
    print("installing the Debian package nginx (for the side-by-side figures)", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    found = find()
    if found is None:
        raise RuntimeError("nginx is not installed and could not be installed")
    return found


def _free_port() -> int:
    # nginx cannot report a port it picked; take one the OS offers and hand it over (retried on a race).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """One nginx (a master and one worker process) in front of `primary` with `standby` as backup."""

    def __init__(self, primary: str, standby: str) -> None:
        self.binary = ensure_installed()
        self.dir = Path(tempfile.mkdtemp(prefix="eagleeye-nginx-"))
        self.popen: subprocess.Popen[bytes] | None = None
        for _ in range(5):
            port = _free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(CONFIG.format(dir=self.dir, port=port, primary=primary, standby=standby,
                                          DETECTOR_SERVICE=DETECTOR_SERVICE))
            self.popen = subprocess.Popen([self.binary, "-p", str(self.dir), "-c", str(conf)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.address = f"127.0.0.1:{port}"
            if self._wait_listening(port):
                return
            self.popen.kill()
            self.popen.wait()
        raise RuntimeError(f"nginx did not start; its error log:\n{self.error_log()}")

    def _wait_listening(self, port: int, timeout: float = 10.0) -> bool:
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.popen.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                time.sleep(0.02)  # polling a port nginx gives no other sign of having opened
        return False

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text() if path.exists() else ""

    def pids(self) -> list[int]:
        """The master and its workers."""
        assert self.popen is not None
        master = self.popen.pid
        out = [master]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                            out.append(int(entry))
                except (OSError, ValueError, IndexError):
                    continue
        return out

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
