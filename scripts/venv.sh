# Sourced by the other scripts: make .venv if needed and install the project into it.
# The install is redone only when pyproject.toml changes.
VENV=${BHYVESUP_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" || {
        echo "error: 'python3 -m venv' failed; on Debian install the python3-venv package" >&2
        exit 1
    }
fi
stamp="$VENV/.bhyvesup-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
