#!/usr/bin/env bash
# Downloads into .whl/ the wheels that the GPU device image lacks, for bench/gpu_validate.py.
#
# The device image ('cuda', Python 3.12.3) has PyTorch, httpx, h11, click, packaging, wrapt,
# prometheus-client, nvidia-ml-py, MarkupSafe and psutil, but not Starlette, uvicorn,
# pydantic, orjson, SQLAlchemy, aiosqlite, Alembic, OpenTelemetry or ecologits, and it cannot
# reach a registry: the wheels travel with the working tree (`carry: [".whl"]`) and are installed
# there with `pip install --no-index --no-deps --target` (bench/gpu_README.md has the line).
#
# Versions are the ones the project's .venv runs its tests with; one version of each (two
# would stop the install). Redis and asyncpg are left out: the run uses no Redis and SQLite only.
#
#   bash scripts/gpu_wheels.sh                 # for the device: CPython 3.12, x86-64
#   PY_VERSION=3.11 WHL_DIR=/tmp/w bash scripts/gpu_wheels.sh   # same set for a local check
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION="${PY_VERSION:-3.12}"
WHL_DIR="${WHL_DIR:-.whl}"
PIP="${PIP:-.venv/bin/pip}"

if [ "$WHL_DIR" = ".whl" ]; then
    exclude="$(git rev-parse --git-path info/exclude)"
    mkdir -p "$(dirname "$exclude")"
    grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
fi

PACKAGES=(
    # the proxy's web stack
    starlette==1.10.0
    uvicorn==0.54.0
    anyio==4.16.0
    pydantic==2.14.4
    pydantic_core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
    typing_extensions==4.16.0
    orjson==3.13.0
    # the ledger
    SQLAlchemy==2.1.9
    greenlet==3.5.6
    aiosqlite==0.22.1
    alembic==1.20.1
    Mako==1.4.3
    # telemetry (/metrics)
    opentelemetry-api==1.45.2
    opentelemetry-sdk==1.45.2
    opentelemetry-semantic-conventions==0.66b2
    opentelemetry-exporter-prometheus==0.66b2
    # the estimator's model catalogue
    ecologits==0.11.3
    # the upstream client (proxy/transport.py: aiohttp's connection pool)
    aiohttp==3.14.5
    aiohappyeyeballs==2.7.1
    aiosignal==1.4.0
    attrs==26.1.0
    frozenlist==1.8.0
    multidict==7.2.1
    propcache==0.5.4
    yarl==1.25.1
)

PLATFORMS=()
for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
    manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    PLATFORMS+=(--platform "${tag}_x86_64")
done

rm -rf "$WHL_DIR"
mkdir -p "$WHL_DIR"
"$PIP" download --quiet --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp "${PLATFORMS[@]}" \
    -d "$WHL_DIR" "${PACKAGES[@]}" 2> >(grep -v "is ignored: it is neither a file" >&2)

count="$(find "$WHL_DIR" -type f -name '*.whl' | wc -l)"
if [ "$count" -ne "${#PACKAGES[@]}" ]; then
    echo "gpu_wheels: expected ${#PACKAGES[@]} wheels, got $count" >&2
    exit 1
fi
echo "gpu_wheels: $count wheels for CPython $PY_VERSION in $WHL_DIR ($(du -sh "$WHL_DIR" | cut -f1))"
