"""The dependency rules of style.md, checked on the source: `meters` never imports `proxy`,
only one module touches each vendor library, nothing imports `proxy.app`, no FastAPI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_meters_never_imports_proxy() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in modules("meters")
        if any(name == "proxy" or name.startswith("proxy.") for name in imports_of(p))
    ]
    assert offenders == []


def test_only_the_nvml_source_imports_pynvml() -> None:
    users = [
        str(p.relative_to(ROOT))
        for p in modules("meters") + modules("proxy")
        if any(name.startswith("pynvml") for name in imports_of(p))
    ]
    assert users == ["meters/sources/nvml.py"]


def test_nothing_imports_the_app_module() -> None:
    users = [
        str(p.relative_to(ROOT))
        for p in modules("proxy") + modules("meters")
        if "proxy.app" in imports_of(p) and p.name not in ("cli.py", "demo.py")
    ]
    assert users == []


def test_only_telemetry_and_app_touch_the_otel_sdk() -> None:
    users = [
        str(p.relative_to(ROOT))
        for p in modules("proxy") + modules("meters")
        if any(name.startswith("opentelemetry.sdk") for name in imports_of(p))
    ]
    assert all("telemetry" in u or u.endswith("app.py") for u in users), users


def test_no_function_in_the_relay_is_over_60_lines() -> None:
    long = []
    for path in modules("proxy/relay"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({lines} lines)")
    assert long == []


def test_telemetry_does_not_import_the_relay() -> None:
    users = [
        str(p.relative_to(ROOT))
        for p in modules("proxy/telemetry")
        if any(name.startswith("proxy.relay") for name in imports_of(p))
    ]
    assert users == []


def test_nothing_imports_fastapi() -> None:
    users = [
        str(p.relative_to(ROOT))
        for p in modules("proxy") + modules("meters")
        if any(name == "fastapi" or name.startswith("fastapi.") for name in imports_of(p))
    ]
    assert users == []


def test_a_worker_with_the_app_built_has_not_loaded_fastapi(tmp_path: Path) -> None:
    """Not even through a dependency: FastAPI and its layers cost each worker about 7 MB of
    RSS (issue 17), and the app is plain Starlette routes."""
    script = f"""
import sys
from proxy.app import create_app
from proxy.cli import main
from proxy.config import parse_settings
settings = parse_settings({{"ledger": {{"url": "sqlite:///{tmp_path / "ledger.db"}"}}}})
create_app(settings)
print(sorted(m for m in sys.modules if m.split(".")[0] == "fastapi"))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
