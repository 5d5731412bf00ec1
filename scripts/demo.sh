#!/usr/bin/env bash
# First command of the README: set up, then run the proxy in front of a real local model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh model
exec .venv/bin/footprint demo "$@"
