#!/usr/bin/env bash
# Creates .venv and installs Footprint with the given extras (default: the demo model).
# llama-cpp-python has no prebuilt wheel: the first time, pip compiles llama.cpp (measured:
# 16–17.5 minutes on a busy 2-core machine) and caches the wheel, so later installs take
# seconds. It is built portable: the native build uses instructions (AMX) that crash on some
# CPUs at the first request. pip says nothing while it compiles: progress.sh prints a line a
# minute meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-model}
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
# setuptools' ten-line box about editable installs says nothing a user can act on.
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore:Editable installation}"
.venv/bin/python -m pip install -q --upgrade pip
what="installing"
echo "setup: installing Footprint ($extras) into .venv"
if [[ ",$extras," == *,model,* ]] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  what="installing (compiling llama.cpp takes 16–17.5 min on a busy 2-core machine)"
  echo "setup: unless pip has a cached wheel, it now compiles llama.cpp for llama-cpp-python,"
  echo "setup: once: 16–17.5 minutes measured on a busy 2-core machine; later runs take seconds."
fi
bash scripts/progress.sh "$what" .venv/bin/python -m pip install -q -e ".[$extras]"
echo "setup: done. The footprint command is $PWD/.venv/bin/footprint: run it by that path, or"
echo "setup: 'source $PWD/.venv/bin/activate' to have footprint (and python) on your PATH."
