"""The page's own files: names only ever become text, nothing inline that the
Content-Security-Policy would have to allow, and the charting library is the released file
with its licence."""

from __future__ import annotations

import re
import tomllib

from proxy.routes.dashboard import STATIC_DIR
from tests.support.processes import REPO_ROOT

OWN_SCRIPTS = sorted(p for p in STATIC_DIR.glob("*.js") if not p.name.endswith(".min.js"))


def test_no_script_of_ours_builds_html_from_strings() -> None:
    assert OWN_SCRIPTS
    for path in OWN_SCRIPTS:
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{path.name} uses {sink}"
        assert "localStorage" not in text, path.name


def test_the_html_has_no_inline_script_style_or_handler() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)
    assert "http://" not in html and "https://" not in html  # no third-party origin


def test_chart_js_is_the_released_file_with_its_licence() -> None:
    head = (STATIC_DIR / "chart.umd.min.js").read_text()[:200]
    assert re.search(r"Chart\.js v4\.\d+\.\d+", head) and "MIT License" in head
    assert "MIT License" in (STATIC_DIR / "chart.js-license.md").read_text()


def test_the_static_files_ship_in_the_package() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "dashboard/static/*" in pyproject["tool"]["setuptools"]["package-data"]["proxy"]
