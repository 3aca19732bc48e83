#!/bin/sh
# The whole test suite: `make test` runs this.
#
# It installs the checkout (native helpers built by pip) into a virtual environment
# outside the checkout, which the unprivileged test user can run, then runs pytest.  Run
# as root, the suite also runs every behavioural test as that user, creating it (with
# subordinate ids) if missing; run as an ordinary user, the root half is skipped.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
VENV=${COOPY_TEST_VENV:-/var/tmp/coopy-test-venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q ".[dev]"
chmod -R a+rX "$VENV"
exec "$VENV/bin/python" -m pytest "$@"
