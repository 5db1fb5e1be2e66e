"""Clients behaving badly: what each costs the router and the other clients.

    python -m bench.hostile [--out bench/out]

Runs the scenarios of tests/test_hostile_clients.py (real processes on 127.0.0.1: a primary, a
standby and a router) with EAGLEEYE_FIGURES set, so that each records what it measured, and prints
them as a table: what the misbehaving client got, what the others saw, the router's health Check
p99, the router's resident memory (start -> peak) and the switches to FAILOVER, STANDBY_DOWN or
BOTH_DOWN it caused. The scenarios also assert their bounds; a failed one is still shown, marked.
Then the two scenarios where nginx applies (the proxy users would otherwise put in front of two
workers, bench/nginx.py: large frames that are never read, a burst of new streams) run against nginx
in front of the same workers, for a row beside the router's. Writes hostile.json into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SCENARIOS = "tests/test_hostile_clients.py"


async def nginx_rows(tmp: Path) -> list[dict[str, Any]]:
    """The scenarios where nginx applies, with nginx in front of a primary and a standby."""
    from bench.nginx import Nginx
    from eagleeye.harness.processes import LocalCluster
    from tests.conftest import fast_config
    from tests.test_hostile_clients import burst_of_streams, large_frames_never_read, noise_frame, rss_mib

    cluster = LocalCluster(worker_args=["--config", fast_config(tmp, {"max_image_bytes": 20 * 1024 * 1024})])
    nginx: Nginx | None = None
    rows: list[dict[str, Any]] = []
    try:
        cluster.wait_normal()
        nginx = Nginx(cluster.primary_address, cluster.standby_address)
        frame = await asyncio.to_thread(noise_frame, 4096, 2048)
        r = await large_frames_never_read(nginx.address, nginx.pids(), frame)
        rows.append(dict(proxy="nginx", case=f"nine streams of {r.frame_mb:.1f} MB JPEGs from one client that never "
                         "reads", client="no per-client bound", others=r.others(),
                         router_rss_mib=f"{r.rss_before_mib:.0f} -> {r.rss_peak_mib:.0f}", passed=True))
        before = sum(rss_mib(pid) for pid in nginx.pids())
        counts, took = await burst_of_streams(nginx.address)
        after = sum(rss_mib(pid) for pid in nginx.pids())
        rows.append(dict(proxy="nginx", case="1100 DetectStreams opened at once, one small frame each", client=counts,
                         others=f"all done in {took:.1f} s", router_rss_mib=f"{before:.0f} -> {after:.0f} (after)",
                         passed=True))
    finally:
        if nginx is not None:
            nginx.stop()
        cluster.stop()
    return rows


def run(out: Path) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.jsonl"
        env = {**os.environ, "EAGLEEYE_FIGURES": str(figures)}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", SCENARIOS,
                               ], env=env, text=True,
                              capture_output=True, timeout=1800)
        failed = {line.split("::")[-1].split(" ")[0] for line in proc.stdout.splitlines()
                  if line.startswith("FAILED") or line.startswith("ERROR")}
        rows = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    for row in rows:
        row["passed"] = row["test"] not in failed
        row["proxy"] = "router"
    with tempfile.TemporaryDirectory() as tmp:
        rows += asyncio.run(nginx_rows(Path(tmp)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "hostile.json").write_text(json.dumps(rows, indent=2) + "\n")
    if not rows:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("what the client does", "proxy", "what it got", "what the others saw", "proxy's Check p99",
            "proxy RSS MiB", "sick switches")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = "" if r["passed"] else " (FAILED)"
        lines.append("| " + " | ".join(str(x) for x in (
            r["case"] + mark, r["proxy"], r.get("client", ""), r.get("others", ""),
            f"{r['check_p99_ms']} ms" if "check_p99_ms" in r else "-", r.get("router_rss_mib", "-"),
            len(r["switches"]) if "switches" in r else "-")) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    args = p.parse_args()
    print("clients behaving badly (tests/test_hostile_clients.py scenarios, real processes on 127.0.0.1)",
          flush=True)
    rows = run(args.out)
    print(table(rows))
    print(f"written: {args.out / 'hostile.json'}")
    return 0 if rows and all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
