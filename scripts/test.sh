#!/usr/bin/env bash
# Second command of the README (and what CI runs): set up, then every test and quality gate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,model
bash scripts/services.sh            # PostgreSQL and Redis on 127.0.0.1, installed if absent
echo "== ruff";  .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy";  .venv/bin/mypy meters/ proxy/
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
