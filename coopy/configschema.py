"""What coop.toml may hold: every table and key, and how each value is checked.

The schema (``SCHEMA``) maps each key to a converter that returns the value to store or
raises :class:`Invalid` with the reason; :mod:`coopy.config` adds the file, line and
key.  The value formats shared with the command line live here too: sizes
(``"512m"``), mount specs (``"SRC:DST[:ro]"``, as ``-v`` takes them) and ``"$VAR"``
references in ``[env]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Final, NamedTuple

from coopy.errors import ConfigError

# -- Values: sizes, mounts, environment references ----------------------------------

# Patterns stay strings until first use (re caches what it compiles): compiling them
# all at import would cost milliseconds that every `coopy` invocation pays.
_SIZE = r"(?i)(\d+)(?:\.(\d+))?\s*(?:([kmgt])(?:i?b)?|b)?"
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse ``"512m"``, ``"8g"``, ``"1.5G"``, ``"100k"`` or plain digits into bytes.

    Units are binary (k = 1024).  Raises ValueError saying what is accepted.
    """
    match = re.fullmatch(_SIZE, text.strip())
    if match is None:
        raise ValueError(
            f"invalid size {show(text)}: expected bytes or a number with k, m, g"
            ' or t, like "512m" or "1.5g"'
        )
    whole, frac, unit = match.group(1), match.group(2) or "", match.group(3) or ""
    if frac and not unit:
        raise ValueError(f"invalid size {show(text)}: a fraction of a byte")
    # Integer arithmetic, so "1.1g" is exact rather than what a float rounds to.
    return int(whole + frac) * _UNITS[unit.lower()] // int(10 ** len(frac))


class MountSpec(NamedTuple):
    """One mount asked for: a host path or a named volume, at ``target`` in the box.

    ``target`` is absolute, or ``~/…`` (coop's form) for the box user's home, which
    is known only once the image and user are: see :meth:`target_for`.
    """

    source: Path | None
    volume: str | None
    target: PurePosixPath
    readonly: bool = False

    def target_for(self, home: PurePosixPath) -> PurePosixPath:
        """Return the absolute target, a leading ``~`` replaced by ``home``."""
        if self.target.parts[:1] == ("~",):
            return home.joinpath(*self.target.parts[1:])
        return self.target


class Invalid(ValueError):
    """A value is wrong; the loader adds the file, line and key."""

    def __init__(self, reason: str, hint: str | None = None, index: int | None = None):
        super().__init__(reason)
        self.reason, self.hint, self.index = reason, hint, index


class Ctx:
    """Where relative host paths start (the file's directory, or the cwd), and ~."""

    __slots__ = ("base", "home")

    def __init__(self, base: Path, home: Path) -> None:
        self.base, self.home = base, home


_VOLUME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_MOUNT_FORMS: Final = '"SRC:DST", "SRC:DST:ro" or "SRC:DST:rw"'


def parse_mount_spec(spec: str, *, base: Path, home: Path, where: str) -> MountSpec:
    """Parse ``"SRC:DST[:ro|:rw]"`` as written after ``-v`` or in ``[sandbox] mounts``.

    SRC ``~``/``~/…`` is under ``home``, ``/…`` is absolute, ``./…``/``../…`` is
    relative to ``base``; a bare name (``claude-config``) is a named volume.  DST is
    absolute (or ``~/…``, coop's form).  ``where`` prefixes the error message (``-v``,
    ``coop.toml:7: [sandbox] mounts``).  The source's existence is not checked here.
    """
    try:
        return _mount(spec, Ctx(base, home))
    except Invalid as exc:
        message = f"{where}: {exc.reason}" if where else exc.reason
        hint = exc.hint or "e.g. ~/data:/data:ro (a path), cache:/root/.cache (a volume)"
        raise ConfigError(message, hint) from None


def _mount(spec: str, ctx: Ctx) -> MountSpec:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise Invalid(f"{show(spec)}: expected {_MOUNT_FORMS}")
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        option = show(parts[2])
        expected = f"unknown option {option}; expected {_MOUNT_FORMS}"
        raise Invalid(f"{show(spec)}: {expected}")
    source, volume = mount_source(parts[0], spec, ctx)
    target = mount_target(parts[1], spec)
    return MountSpec(source, volume, target, parts[2:] == ["ro"])


def mount_source(src: str, spec: str, ctx: Ctx) -> tuple[Path | None, str | None]:
    if src == "~" or src.startswith("~/"):
        return ctx.home / src[2:], None
    if src.startswith("/"):
        return Path(src), None
    if src in (".", "..") or src.startswith(("./", "../")):
        return ctx.base / src, None
    if re.fullmatch(_VOLUME, src):
        return None, src
    raise Invalid(
        f"{show(spec)}: the source {show(src)} is neither a path (~/…, /…, ./…) nor"
        " a volume name (a letter or digit, then letters, digits, _ . -)",
        hint=f'for a path relative to the config file write "./{src}"',
    )


def mount_target(dst: str, spec: str) -> PurePosixPath:
    # coop writes "~/.claude" for the box user's home: kept symbolic until it is known.
    if dst == "~" or dst.startswith("~/"):
        head, rest = "~", dst[1:]
    elif dst.startswith("/"):
        head, rest = "/", dst
    else:
        raise Invalid(f"{show(spec)}: the target {show(dst)} must start with /")
    parts = [p for p in rest.split("/") if p not in ("", ".")]
    # Targets are resolved inside the new root later, without following symlinks out
    # of it; a ".." here is a confused spec, so it is reported rather than resolved.
    if ".." in parts:
        raise Invalid(f'{show(spec)}: the target {show(dst)} must not contain ".."')
    return PurePosixPath(head, *parts)


VAR_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VAR_REF = rf"\$(?:({VAR_NAME})|\{{({VAR_NAME})\}})"


def expand_env(
    env: Mapping[str, str], host_env: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Resolve ``[env]``: a whole value ``"$NAME"``/``"${NAME}"`` is from ``host_env``.

    Returns (the environment, the host variables that were missing).  A key whose
    host variable is missing is left out rather than set empty, so that the tool's
    own default applies.  Any other value, ``"$HOME/bin"`` included, is literal.
    """
    out: dict[str, str] = {}
    missing: list[str] = []
    for key, value in env.items():
        ref = re.fullmatch(_VAR_REF, value)
        name = (ref.group(1) or ref.group(2)) if ref else None
        if name is None:
            out[key] = value
        elif name in host_env:
            out[key] = host_env[name]
        else:
            missing.append(name)
    return out, missing


# -- Converters: each returns the value to store or raises Invalid -----------------

Convert = Callable[[Any, Ctx], Any]


def show(value: object) -> str:
    """Show a TOML value as the user wrote it (strings quoted), shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, list):
        text = "[" + ", ".join(show(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:56] + " ..."


def _expected(what: str, value: object) -> Invalid:
    return Invalid(f"expected {what}, got {show(value)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # true is not 1


def _string(value: Any, ctx: Ctx) -> str:
    if isinstance(value, str):
        return value
    raise _expected("a string", value)


def _image(value: Any, ctx: Ctx) -> str:
    """An image reference; the path of ``oci:PATH`` or ``dir:PATH`` made absolute."""
    text = _string(value, ctx)
    kind, sep, rest = text.partition(":")
    if sep and kind in ("oci", "dir") and rest:
        return f"{kind}:{_host_path(rest, ctx)}"
    return text


def _bool(value: Any, ctx: Ctx) -> bool:
    if isinstance(value, bool):
        return value
    raise _expected("true or false", value)


def _count(minimum: int, maximum: int | None = None) -> Convert:
    upto = f" to {maximum}" if maximum is not None else " up"

    def convert(value: Any, ctx: Ctx) -> int:
        if _is_int(value) and minimum <= value and (maximum is None or value <= maximum):
            return int(value)
        raise _expected(f"a whole number from {minimum}{upto}", value)

    return convert


def _size(minimum: int) -> Convert:
    what = f'a size of at least {minimum} (bytes, or like "512m", "8g")'

    def convert(value: Any, ctx: Ctx) -> int:
        if isinstance(value, str):
            try:
                value = parse_size(value)
            except ValueError as exc:
                raise Invalid(f"expected {what}; {exc}") from None
        if _is_int(value) and value >= minimum:
            return int(value)
        raise _expected(what, value)

    return convert


def _cpus(value: Any, ctx: Ctx) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and 0 < value < 1 << 16:  # the comparisons also reject nan and inf
        return float(value)
    raise _expected("a number of CPUs above 0, like 2 or 0.5", value)


def _choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Convert:
    shown = [show(c) for c in choices]
    what = ", ".join(shown[:-1]) + " or " + shown[-1]

    def convert(value: Any, ctx: Ctx) -> str:
        if isinstance(value, str) and value in choices:
            return value
        if isinstance(value, str) and aliases and value in aliases:
            return aliases[value]
        raise _expected(what, value)

    return convert


def _pattern(pattern: str, what: str) -> Convert:
    def convert(value: Any, ctx: Ctx) -> str:
        if isinstance(value, str) and re.fullmatch(pattern, value, re.IGNORECASE):
            return value
        raise _expected(what, value)

    return convert


def _list(item: Convert, what: str) -> Convert:
    """A TOML array whose items each pass ``item``; errors name the item, from 1."""

    def convert(value: Any, ctx: Ctx) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _expected(f"a list of {what}", value)
        out = []
        for i, entry in enumerate(value):
            try:
                out.append(item(entry, ctx))
            except Invalid as exc:
                raise Invalid(f"item {i + 1}: {exc.reason}", exc.hint, i) from None
        return tuple(out)

    return convert


def _host_path(value: Any, ctx: Ctx) -> Path:
    if isinstance(value, str) and (value == "~" or value.startswith("~/")):
        return ctx.home / value[2:]
    if isinstance(value, str) and value and not value.startswith("~"):
        return ctx.base / value  # an absolute value replaces base
    raise _expected("a path (~/…, /… or relative to the file's directory)", value)


def _box_path(value: Any, ctx: Ctx) -> PurePosixPath:
    parts = value.split("/") if isinstance(value, str) else []
    if not isinstance(value, str) or not value.startswith("/") or ".." in parts:
        raise _expected('an absolute path in the box, without ".."', value)
    return PurePosixPath("/", *[p for p in parts if p not in ("", ".")])


def _env_value(value: Any, ctx: Ctx) -> str:
    if not isinstance(value, str):
        hint = f'quote it: "{show(value)}"'
        raise Invalid(f"expected a string, got {show(value)}", hint)
    if value.startswith("${") and not re.fullmatch(_VAR_REF, value):
        raise _expected('"${NAME}" with NAME made of letters, digits and _', value)
    return value


def _gpu(value: Any, ctx: Ctx) -> int | str:
    if _is_int(value) and value >= 0:
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"(GPU|MIG)-[A-Za-z0-9/-]+", value):
        return value
    what = "an index (0, 1, …) or a UUID (GPU-…, MIG-…)"
    raise Invalid(f"expected {what}, got {show(value)}", "nvidia-smi -L lists them")


def _gpu_devices(value: Any, ctx: Ctx) -> str | tuple[int | str, ...]:
    if isinstance(value, list) and value:
        return tuple(_list(_gpu, "GPUs")(value, ctx))
    if value in ("all", "none") and isinstance(value, str):
        return value
    raise Invalid(
        f'expected "all", "none" or a list of GPU indices/UUIDs, got {show(value)}',
        hint='for example devices = [0, 2]; "none" means no GPUs',
    )


def _mount_item(value: Any, ctx: Ctx) -> MountSpec:
    if isinstance(value, MountSpec):  # already parsed by the CLI (-v)
        return value
    if isinstance(value, str):
        return _mount(value, ctx)
    # coop's table form: { host = "~/.bashrc", container = "~/.bashrc" }.
    if isinstance(value, dict) and sorted(value) == ["container", "host"]:
        host, box = value["host"], value["container"]
        if isinstance(host, str) and isinstance(box, str):
            source, volume = mount_source(host, f"{host}:{box}", ctx)
            return MountSpec(source, volume, mount_target(box, f"{host}:{box}"))
    raise _expected('"SRC:DST[:ro]"', value)


_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"
_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_HOST = rf"(\*\.)?({_LABEL}\.)*{_LABEL}\.?|[0-9.]+(/\d+)?|[0-9a-f:]*:[0-9a-f:.]*(/\d+)?"
_KEY = r"ctrl-[a-z@\[\\\]^_]|[a-z]"  # an item of docker's --detach-keys
_strings = _list(_string, "strings")

# -- The schema: every table and key coop.toml may hold, and the kind of its value --
# Keys map one to one onto the fields of the dataclasses below (a test checks it).

SCHEMA: Final[Mapping[str, Mapping[str, Convert]]] = {
    "sandbox": {
        "image": _image,  # "host", an image reference, oci:PATH, dir:PATH, recipe:NAME
        "agent": _string,  # a preset name or a command line; unset: a login shell
        "command": _string,  # coop's older name for agent
        "args": _strings,
        "shell": _string,
        "user": _string,
        "setup": _strings,
        "mounts": _list(_mount_item, '"SRC:DST[:ro]" strings'),
        "shm": _size(1),
        "tmp_size": _size(1),
    },
    "mount": {"source": _string, "target": _string, "ro": _bool},  # [[mount]]
    "workspace": {
        "path": _box_path,
        "git": _choice("rw", "ro", "default"),
        "mode": _choice("rw", "cow"),
        "worktree_dir": _host_path,
        "mount": _host_path,  # coop's: the host directory to mount
    },
    "env": {"*": _env_value},  # any NAME = "value" or "$HOST_VAR"
    "agent": {"pass_env": _list(_pattern(r"\w+\*?", "NAME or PREFIX*"), "names")},
    "session": {
        "auto_restart": _bool,
        "restart_delay_ms": _count(0),
        "scrollback": _size(0),
        "detach_keys": _pattern(f"({_KEY})(,({_KEY}))*", '"ctrl-]" or "ctrl-p,ctrl-q"'),
        "log_max": _size(0),
        "persist": _strings,  # coop's, accepted so its files load
    },
    "network": {
        # coop's "veth" was its own private network: the same promise, so it maps.
        "mode": _choice("private", "host", "none", "allow", aliases={"veth": "private"}),
        "allow": _list(_pattern(_HOST, "a domain, *.suffix, IP or CIDR"), "hosts"),
        "ports": _list(_pattern(rf"(([0-9.]+|\[[0-9a-fA-F:]+\]):)?({_PORT}:)?{_PORT}(/(tcp|udp))?",
                                '"8080:80"'), "ports"),
        "backend": _choice("auto", "pasta", "slirp4netns"),
        "oauth_ports": _list(_count(1, 65535), "port numbers"),
    },
    "gpu": {"devices": _gpu_devices, "exclusive": _bool},
    "limits": {
        "pids": _count(1),
        "memory": _size(1 << 20),
        "cpus": _cpus,
        "nofile": _count(1),
    },
    "security": {"seccomp": _bool, "nested_userns": _bool},
    "image": {
        "insecure": _bool,
        "platform": _pattern(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", '"linux/arm64"'),
    },
    "conda": {"env": _string, "root": _host_path},
    "storage": {"root": _host_path},
    # coop's, accepted so its files load; coopy's keeper filters no input.
    "input_filter": {"ctrl_c_debounce_ms": _count(0), "block_sequences": _strings},
}
ARRAY_TABLES: Final = frozenset({"mount"})
# Lists that accumulate across layers (a project's mounts add to the user's); other
# keys, lists included, are replaced by the later layer.  [env] merges name by name.
ADDITIVE: Final = frozenset({"sandbox.mounts", "sandbox.setup", "agent.pass_env"})
