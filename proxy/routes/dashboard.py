"""`GET /dashboard`: the dashboard page, served as static files from the package.

The page holds no data of its own: it reads the JSON API with the key the user signs in with.
Every answer here carries a strict Content-Security-Policy (scripts, styles and API calls
from this origin only; no inline script or style, no frames, no third-party origin) and
`X-Content-Type-Options: nosniff`, so a name that reached the ledger cannot run as code.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.responses import FileResponse, Response

from proxy.errors import NotFound
from proxy.routes import Router

dashboard_router = Router()

STATIC_DIR = Path(__file__).resolve().parent.parent / "dashboard" / "static"
# docs/methodology.md of a source checkout (how Footprint is installed: `pip install -e`).
METHODOLOGY_FILE = Path(__file__).resolve().parents[2] / "docs" / "methodology.md"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    # The page changes with the package; the browser asks again rather than run an old copy.
    "cache-control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Flat file names only: nothing outside the static folder can be named.
STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,80}\.(?:js|css|md|svg)$")


def _file(path: Path) -> Response:
    if not path.is_file():
        raise NotFound(f"no dashboard file {path.name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)


@dashboard_router.get("/dashboard")
async def dashboard_page() -> Response:
    return _file(STATIC_DIR / "index.html")


@dashboard_router.get("/dashboard/methodology.md")
async def dashboard_methodology() -> Response:
    return _file(METHODOLOGY_FILE)


@dashboard_router.get("/dashboard/static/{name}")
async def dashboard_static(name: str) -> Response:
    if not STATIC_NAME.match(name):
        raise NotFound(f"no dashboard file {name[:80]!r}")
    return _file(STATIC_DIR / name)
