"""Paths and loaders for the deploy/ checks."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# The Kubernetes version the manifests are checked against (kubernetes-validate ships schemas
# from 1.25 on); the manifests use nothing newer than it.
KUBERNETES_VERSION = "1.30.0"


def k8s_documents() -> list[tuple[str, int, dict[str, Any]]]:
    """(path relative to deploy/k8s, index in file, document) for every manifest."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                found.append((str(path.relative_to(K8S)), index, doc))
    return found


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _path, _index, doc in k8s_documents() if doc["kind"] == kind]


def k8s_one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in k8s_kind(kind) if d["metadata"]["name"] == name]
    return doc


def tool(name: str) -> str:
    """A console script installed beside this Python (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed: pip install -e '.[test]'")
    return found
