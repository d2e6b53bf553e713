#!/usr/bin/env bash
# Renew scripts/constraints.txt on purpose: install the newest releases the pyproject ranges allow
# into a fresh virtualenv, run the tests there, and write the pins only if they pass.
#   bash scripts/update-constraints.sh          (takes as long as an install plus the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=$(mktemp -d)/venv
"$PY" -m venv "$venv"
AUTOML_PRUNE_UNPINNED=1 PYTHON="$venv/bin/python" bash scripts/install.sh dev
"$venv/bin/python" -m pytest -m "not slow" -q
{
  sed -n '1,/^# python /p' scripts/constraints.txt | sed '$d'
  echo "# python $("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  "$venv/bin/python" -m pip freeze --exclude-editable | grep -vE '^(torch==|#)'
} > scripts/constraints.txt.new
mv scripts/constraints.txt.new scripts/constraints.txt
echo "scripts/constraints.txt renewed from $venv; review 'git diff scripts/constraints.txt' and commit it"
