#!/usr/bin/env bash
# Builds the Python package's wheel with maturin and tests the installed wheel with pytest:
# a fresh venv (target/py-venv) with the pinned build and test dependencies
# (requirements-test.txt), `maturin build --release` into target/wheels-py, the wheel
# installed into the venv, pytest run from a scratch directory so that nothing of the
# source tree can shadow the installed `rtdetr`. The CLI (target/release/rtdetr) is built
# too: the tests compare with `rtdetr detect --json` and `rtdetr eval`.
#
#   bash crates/rtdetr-py/ci.sh            # from the repository root (or anywhere)
#   PYTHON=python3.12 bash crates/rtdetr-py/ci.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/target/py-venv"
WHEELS="$ROOT/target/wheels-py"

echo "-- venv ($VENV) with $($PYTHON --version)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r crates/rtdetr-py/requirements-test.txt

echo "-- the CLI, for the comparisons"
cargo build --release -p rtdetr-cli

echo "-- wheel (maturin build --release)"
rm -rf "$WHEELS"
"$VENV/bin/maturin" build --release --out "$WHEELS" -m crates/rtdetr-py/Cargo.toml
shopt -s nullglob
wheels=("$WHEELS"/rtdetr-*-abi3-*.whl)
[ "${#wheels[@]}" -eq 1 ] || { echo "expected one abi3 wheel in $WHEELS, got: ${wheels[*]:-none}"; exit 1; }
"$VENV/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "${wheels[0]}"

echo "-- pytest (installed wheel)"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
cd "$SCRATCH"
rc=0
RTDETR_BIN="$ROOT/target/release/rtdetr" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  --rootdir "$ROOT/crates/rtdetr-py/tests" "$ROOT/crates/rtdetr-py/tests" || rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$rc"
