#!/usr/bin/env bash
# Creates .venv and installs Footprint with the given extras (default: the demo model).
# llama-cpp-python has no prebuilt wheel: pip compiles llama.cpp once (about 8 minutes on
# 2 cores) and caches the wheel. It is built portable: the native build uses instructions
# (AMX) that crash on some CPUs at the first request.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-model}
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[$extras]"
