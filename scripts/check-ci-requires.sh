#!/usr/bin/env bash
# Proves that the CI's test step (.ci/run's: AUTOML_PRUNE_REQUIRE=1 python -m pytest -m "not slow" -q) fails, not skips, when what CI must have is missing:
#   1. in a copy of this clone with no ../shared/data beside it (and $AUTOML_PRUNE_DATA_DIR unset),
#   2. with $AUTOML_PRUNE_DATA_DIR naming an empty folder,
# it must exit non-zero and print exactly one line, naming the offline data folder. Takes a
# few seconds (the check runs before any test is collected). Exit status 0 when both hold.
#   bash scripts/check-ci-requires.sh      (PYTHON: the interpreter with the test dependencies;
#                                          default .venv/bin/python of this clone, else python3)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$repo/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
bindir=$(mktemp -d)
work=$(mktemp -d)
trap 'rm -rf "$bindir" "$work"' EXIT
# the test step runs `python`: this one, virtualenv activated or not (a wrapper, not a link: a link would
# lose the virtualenv, which Python finds beside the path it was started by)
printf '#!/bin/sh\nexec "%s" "$@"\n' "$PY" > "$bindir/python"
chmod +x "$bindir/python"

fail=0
expect_one_line() {  # name, text the line must hold, the folder to run the tests in, then VAR=value settings
  local name=$1 want=$2 dir=$3 rc=0 out lines
  shift 3
  out=$(cd "$dir" && env -u AUTOML_PRUNE_DATA_DIR PATH="$bindir:$PATH" "$@" AUTOML_PRUNE_REQUIRE=1 python -m pytest -m "not slow" -q 2>&1) || rc=$?
  lines=$(printf '%s\n' "$out" | grep -c . || true)
  if [ "$rc" -ne 0 ] && [ "$lines" -eq 1 ] && printf '%s' "$out" | grep -qF -- "$want"; then
    echo "ok: $name: exit $rc, one line: $(printf '%s' "$out" | grep .)"
  else
    echo "FAILED: $name: exit $rc, $lines lines (want non-zero, one line naming '$want'):"
    printf '%s\n' "$out" | head -20
    fail=1
  fi
}

# 1. a copy of the clone (its tracked and untracked, not ignored, files) where ../shared/data does not exist
mkdir "$work/clone"
git -C "$repo" ls-files -z --cached --others --exclude-standard |
  tar -C "$repo" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$work/clone" -xf -
[ ! -e "$work/shared/data" ]
expect_one_line "../shared/data absent" "offline data folder $work/shared/data" "$work/clone"

# 2. this clone, the data folder named by $AUTOML_PRUNE_DATA_DIR empty
mkdir "$work/empty"
expect_one_line "AUTOML_PRUNE_DATA_DIR empty" "offline data folder: $work/empty" "$repo" AUTOML_PRUNE_DATA_DIR="$work/empty"

exit "$fail"
