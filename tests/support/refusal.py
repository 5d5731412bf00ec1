"""`footprint serve` refusing a configuration: the one stderr line it prints, and its exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def serve_refusal(config: Path) -> str:
    """Start `python -m proxy.cli serve --config config`, expect it to stop at once with exit 2
    and exactly one line on stderr, and return that line."""
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]
