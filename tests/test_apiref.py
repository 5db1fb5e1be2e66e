"""docs/client-api.md is what docs/apiref.py makes of the library's docstrings today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_client_api_reference_matches_the_code() -> None:
    made = subprocess.run([sys.executable, str(ROOT / "docs" / "apiref.py")], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert made == (ROOT / "docs" / "client-api.md").read_text(), "docs/client-api.md is stale: run `make docs`"
