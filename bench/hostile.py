"""Clients behaving badly: what each costs the router and the other clients.

    python -m bench.hostile [--out bench/out]

Runs the scenarios of tests/test_hostile_clients.py (real processes on 127.0.0.1: a primary, a
standby and a router) with EAGLEEYE_FIGURES set, so that each records what it measured, and prints
them as a table: what the misbehaving client got, what the others saw, the router's health Check
p99, the router's resident memory (start -> peak) and the switches to FAILOVER, STANDBY_DOWN or
BOTH_DOWN it caused. The scenarios also assert their bounds; a failed one is still shown, marked.
Writes hostile.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SCENARIOS = "tests/test_hostile_clients.py"


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
    out.mkdir(parents=True, exist_ok=True)
    (out / "hostile.json").write_text(json.dumps(rows, indent=2) + "\n")
    if not rows:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("what the client does", "what it got", "what the others saw", "router Check p99",
            "router RSS MiB", "sick switches")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = "" if r["passed"] else " (FAILED)"
        lines.append("| " + " | ".join(str(x) for x in (
            r["case"] + mark, r.get("client", ""), r.get("others", ""),
            f"{r['check_p99_ms']} ms" if "check_p99_ms" in r else "-", r.get("router_rss_mib", "-"),
            len(r.get("switches", [])))) + " |")
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
