#!/bin/sh
# Install coopy on Debian or Ubuntu.
#
#   ./install.sh            system-wide: /opt/coopy, with `coopy` in /usr/local/bin
#                           (uses sudo for that and for the system packages)
#   ./install.sh --user     only for you: ~/.local/share/coopy, `coopy` in ~/.local/bin
#                           (system packages still need sudo if they are missing)
#
# What it does, in order (each step says what it is doing):
#   1. installs the system packages coopy needs: python3 + venv, a C compiler and the
#      static C library (coopy's helpers are built here), uidmap (newuidmap/newgidmap);
#   2. gives the installing user (and root) a range of subordinate ids if they have none,
#      so boxes have uids 0-65535;
#   3. on Ubuntu 23.10+, where unprivileged user namespaces need an AppArmor profile,
#      installs one for coopy's own interpreter only (a copy, not the system python);
#   4. builds and installs coopy into its own virtual environment.
# Using coopy afterwards needs no root.
set -eu

MODE=system
for arg in "$@"; do
    case "$arg" in
        --user) MODE=user ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

SRC=$(cd "$(dirname "$0")" && pwd)
say() { printf 'coopy install: %s\n' "$*" >&2; }
die() { printf 'coopy install: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    SUDO=""
fi
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif [ -n "$SUDO" ]; then sudo "$@"
    else die "this step needs root: $* (install sudo, or run it as root)"
    fi
}

# 1. System packages -------------------------------------------------------------------
PKGS="python3 python3-venv gcc make libc6-dev uidmap passt"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
if [ -n "$missing" ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing:$missing (install them with your package manager)"
    say "installing system packages:$missing"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# 2. Subordinate ids -------------------------------------------------------------------
next_free() {  # the first id >= $1 after every range in /etc/subuid and /etc/subgid
    awk -F: -v min="$1" 'BEGIN { m = min }
        NF == 3 && $2 + $3 > m { m = $2 + $3 }
        END { print m }' /etc/subuid /etc/subgid 2>/dev/null || echo "$1"
}
give_subids() {  # $1 = user name
    if grep -qs "^$1:" /etc/subuid && grep -qs "^$1:" /etc/subgid; then
        return
    fi
    start=$(next_free 100000)
    end=$((start + 65535))
    say "giving $1 subordinate ids $start-$end (for uids 0-65535 in boxes)"
    as_root usermod --add-subuids "$start-$end" --add-subgids "$start-$end" "$1"
}
ME=$(id -un)
give_subids "$ME"
if [ "$MODE" = system ] && [ "$ME" != root ]; then
    give_subids root
fi

# 3. Ubuntu's AppArmor restriction on user namespaces ----------------------------------
if [ "$MODE" = system ]; then
    PREFIX=/opt/coopy
    BIN=/usr/local/bin
else
    PREFIX="${XDG_DATA_HOME:-$HOME/.local/share}/coopy"
    BIN="$HOME/.local/bin"
fi
VENV="$PREFIX/venv"
restrict=$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns 2>/dev/null || echo 0)
if [ "$restrict" = 1 ]; then
    say "AppArmor restricts user namespaces: allowing them for coopy's own programs only"
    as_root tee /etc/apparmor.d/coopy >/dev/null <<EOF
# coopy: unprivileged user namespaces for coopy's own programs only: its native front
# end (which starts boxes from cached plans) and its interpreter (a copy of python3 in
# coopy's virtual environment), not for the system's python.
abi <abi/4.0>,
include <tunables/global>

profile coopy $VENV/bin/python3* flags=(unconfined) {
  userns,
  include if exists <local/coopy>
}

profile coopy-front-end $VENV/bin/coopy flags=(unconfined) {
  userns,
  include if exists <local/coopy>
}
EOF
    as_root apparmor_parser -r /etc/apparmor.d/coopy
fi

# 4. coopy itself ----------------------------------------------------------------------
say "installing coopy into $VENV"
RUN=""
if [ "$MODE" = system ] && [ "$(id -u)" != 0 ]; then
    RUN="as_root"
fi
# --copies: the venv's interpreter is its own file, so the AppArmor profile above (and
# nothing else) applies to it.
$RUN mkdir -p "$PREFIX" "$BIN"
$RUN /usr/bin/python3 -m venv --copies --clear "$VENV"
$RUN "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# Built in a copy of the source: the checkout stays clean and may be read-only.
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
cp -R "$SRC/." "$BUILD/"
rm -rf "$BUILD/build" "$BUILD"/coopy/libexec/coopy "$BUILD"/coopy/libexec/coopy-*
chmod -R a+rX "$BUILD"
$RUN "$VENV/bin/python" -m pip install -q "$BUILD"
$RUN ln -sf "$VENV/bin/coopy" "$BIN/coopy"
say "installed: $BIN/coopy ($("$VENV/bin/coopy" --version))"
case ":$PATH:" in
    *":$BIN:"*) ;;
    *) say "note: $BIN is not on your PATH; add it, or run $BIN/coopy" ;;
esac
# The default private network opens /dev/net/tun as you (pasta/slirp4netns).  Stock
# distributions make it 0666; a machine that made it 0600 is left as it is (a host
# policy), but said, with the fix.
if [ "$(id -u)" != 0 ] && ! { : <>/dev/net/tun; } 2>/dev/null; then
    say "warning: you cannot open /dev/net/tun ($(stat -c %a /dev/net/tun 2>/dev/null || echo missing)), which the default private network needs;"
    say "  stock distributions use 0666: sudo chmod 0666 /dev/net/tun (a udev rule keeps it),"
    say "  or run boxes with --net none; \`coopy doctor\` explains"
fi
