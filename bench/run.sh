#!/bin/sh
# Run the start-up benchmark against one coopy: $COOPY_BIN, else the test venv's, else PATH's.
# Arguments pass through to bench/startup (e.g. --runs 20, --json); a first argument
# `security`, `boxes`, `network`, `gpu`, `images` or `cgroups` runs that script of bench/ instead.
set -eu
here=$(dirname "$0")
if [ -z "${COOPY_BIN:-}" ]; then
    if [ -x /var/tmp/coopy-test-venv/bin/coopy ]; then
        COOPY_BIN=/var/tmp/coopy-test-venv/bin/coopy
    elif command -v coopy >/dev/null 2>&1; then
        COOPY_BIN=$(command -v coopy)
    else
        echo "bench/run.sh: no coopy: set COOPY_BIN, or run ./tests/run.sh once to install" \
             "the checkout into /var/tmp/coopy-test-venv" >&2
        exit 1
    fi
fi
export COOPY_BIN
case ${1:-} in
    security) shift; exec /usr/bin/python3 "$here/security" "$@" ;;
    boxes) shift; exec /usr/bin/python3 "$here/boxes" "$@" ;;
    images) shift; exec /usr/bin/python3 "$here/images" "$@" ;;
    network) shift; exec /usr/bin/python3 "$here/network" "$@" ;;
    gpu) shift; exec /usr/bin/python3 "$here/gpu" "$@" ;;
    cgroups) shift; exec /usr/bin/python3 "$here/cgroups" "$@" ;;
esac
exec /usr/bin/python3 "$here/startup" "$@"
