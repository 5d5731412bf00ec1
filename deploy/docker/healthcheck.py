"""Container health check: GET /healthz on the port the proxy itself was configured with.

Usage: python healthcheck.py [CONFIG_FILE]. The port is resolved by the proxy's own settings
loader (environment > file > default), so a `FOOTPRINT_SERVER__PORT` override or a port set
in the mounted footprint.toml is followed. Exit 0 when the proxy answers 200, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from proxy.config import ConfigError, load_settings


def healthz_url(config_path: str | None, environ: dict[str, str]) -> str:
    """The /healthz URL of the proxy this container runs."""
    path = config_path if config_path and Path(config_path).exists() else None
    settings = load_settings(path, environ=environ)
    return f"http://127.0.0.1:{settings.server.port}/healthz"


def check(url: str, timeout_s: float = 4.0) -> str | None:
    """None when healthy, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{url}: {exc}"
    if body.get("status") != "ok":
        return f"{url}: unexpected answer {body!r}"
    return None


def main(argv: list[str]) -> int:
    try:
        url = healthz_url(argv[1] if len(argv) > 1 else None, dict(os.environ))
    except ConfigError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    reason = check(url)
    if reason is not None:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
