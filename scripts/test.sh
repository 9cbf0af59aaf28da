#!/bin/sh
# Run bhyve-supervisor's checks: lint (ruff), types (mypy --strict) and the test suite.
# Needs only python3: it makes .venv beside the source and installs into it.
# Extra arguments go to pytest (e.g. `sh scripts/test.sh -k argv -x`).
set -eu
cd "$(dirname "$0")/.."
. scripts/venv.sh
"$VENV/bin/ruff" check supervisor tests
"$VENV/bin/ruff" format --check supervisor tests
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
