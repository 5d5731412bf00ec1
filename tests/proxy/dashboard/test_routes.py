"""The page's files are served under the strict policy, and nothing else can be named."""

from __future__ import annotations

import httpx

from proxy.routes.dashboard import METHODOLOGY_FILE, STATIC_DIR


async def test_static_files_are_served_with_the_policy(client: httpx.AsyncClient) -> None:
    got = await client.get("/dashboard/static/charts.js")
    assert got.status_code == 200
    assert got.content == (STATIC_DIR / "charts.js").read_bytes()
    assert got.headers["content-security-policy"].startswith("default-src 'none'")
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["x-frame-options"] == "DENY"


async def test_names_outside_the_folder_or_unknown_are_404(client: httpx.AsyncClient) -> None:
    for name in ("missing.js", ".hidden.js", "index.html", "x" * 90 + ".js"):
        got = await client.get(f"/dashboard/static/{name}")
        assert got.status_code == 404, name
        assert got.json()["error"]["code"] == "not_found"
    # A slash, even encoded, is another path: no route, never a file above the folder.
    assert (await client.get("/dashboard/static/..%2F..%2Fapp.py")).status_code == 404


async def test_the_methodology_link_serves_the_checkouts_doc(client: httpx.AsyncClient) -> None:
    got = await client.get("/dashboard/methodology.md")
    if METHODOLOGY_FILE.is_file():
        assert got.status_code == 200 and got.content == METHODOLOGY_FILE.read_bytes()
        assert got.headers["content-type"].startswith("text/markdown")
    else:
        assert got.status_code == 404 and "methodology.md" in got.json()["error"]["message"]
