"""Configuration: find coop.toml, load it in layers, check every key.

Layers, later wins: built-in defaults < ``~/.config/coopy/config.toml`` < the
project's coop.toml < command-line flags.  coop's own coop.toml files load unchanged.
Every problem is a :class:`ConfigError` naming file, line, key, what was expected and
what was found (``coop.toml:14: [gpu] devices: expected …, got "yes"``); unknown keys
and tables suggest the nearest valid one.  Only the files are read here: whether a
mount source exists is checked when the box is planned.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

from coopy.errors import ConfigError
from coopy.paths import find_workspace as find_workspace  # part of this API

PROJECT_FILE: Final = "coop.toml"  # the same name paths.find_workspace looks for
CLI_ORIGIN: Final = "<command line>"  # the "file" of keys set by flags, in origin

Origin = tuple[str, int | None]


def user_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Return the user's config file, ``$XDG_CONFIG_HOME/coopy/config.toml``."""
    xdg = environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"
    return base / "coopy" / "config.toml"


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
            f"invalid size {_show(text)}: expected bytes or a number with k, m, g"
            ' or t, like "512m" or "1.5g"'
        )
    whole, frac, unit = match.group(1), match.group(2) or "", match.group(3) or ""
    if frac and not unit:
        raise ValueError(f"invalid size {_show(text)}: a fraction of a byte")
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


class _Invalid(ValueError):
    """A value is wrong; the loader adds the file, line and key."""

    def __init__(self, reason: str, hint: str | None = None, index: int | None = None):
        super().__init__(reason)
        self.reason, self.hint, self.index = reason, hint, index


class _Ctx:
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
        return _mount(spec, _Ctx(base, home))
    except _Invalid as exc:
        message = f"{where}: {exc.reason}" if where else exc.reason
        hint = exc.hint or "e.g. ~/data:/data:ro (a path), cache:/root/.cache (a volume)"
        raise ConfigError(message, hint) from None


def _mount(spec: str, ctx: _Ctx) -> MountSpec:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise _Invalid(f"{_show(spec)}: expected {_MOUNT_FORMS}")
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        option = _show(parts[2])
        expected = f"unknown option {option}; expected {_MOUNT_FORMS}"
        raise _Invalid(f"{_show(spec)}: {expected}")
    source, volume = _mount_source(parts[0], spec, ctx)
    target = _mount_target(parts[1], spec)
    return MountSpec(source, volume, target, parts[2:] == ["ro"])


def _mount_source(src: str, spec: str, ctx: _Ctx) -> tuple[Path | None, str | None]:
    if src == "~" or src.startswith("~/"):
        return ctx.home / src[2:], None
    if src.startswith("/"):
        return Path(src), None
    if src in (".", "..") or src.startswith(("./", "../")):
        return ctx.base / src, None
    if re.fullmatch(_VOLUME, src):
        return None, src
    raise _Invalid(
        f"{_show(spec)}: the source {_show(src)} is neither a path (~/…, /…, ./…) nor"
        " a volume name (a letter or digit, then letters, digits, _ . -)",
        hint=f'for a path relative to the config file write "./{src}"',
    )


def _mount_target(dst: str, spec: str) -> PurePosixPath:
    # coop writes "~/.claude" for the box user's home: kept symbolic until it is known.
    if dst == "~" or dst.startswith("~/"):
        head, rest = "~", dst[1:]
    elif dst.startswith("/"):
        head, rest = "/", dst
    else:
        raise _Invalid(f"{_show(spec)}: the target {_show(dst)} must start with /")
    parts = [p for p in rest.split("/") if p not in ("", ".")]
    # Targets are resolved inside the new root later, without following symlinks out
    # of it; a ".." here is a confused spec, so it is reported rather than resolved.
    if ".." in parts:
        raise _Invalid(f'{_show(spec)}: the target {_show(dst)} must not contain ".."')
    return PurePosixPath(head, *parts)


_VAR_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VAR_REF = rf"\$(?:({_VAR_NAME})|\{{({_VAR_NAME})\}})"


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


# -- Converters: each returns the value to store or raises _Invalid -----------------

Convert = Callable[[Any, _Ctx], Any]


def _show(value: object) -> str:
    """Show a TOML value as the user wrote it (strings quoted), shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:56] + " ..."


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what}, got {_show(value)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # true is not 1


def _string(value: Any, ctx: _Ctx) -> str:
    if isinstance(value, str):
        return value
    raise _expected("a string", value)


def _bool(value: Any, ctx: _Ctx) -> bool:
    if isinstance(value, bool):
        return value
    raise _expected("true or false", value)


def _count(minimum: int, maximum: int | None = None) -> Convert:
    upto = f" to {maximum}" if maximum is not None else " up"

    def convert(value: Any, ctx: _Ctx) -> int:
        if _is_int(value) and minimum <= value and (maximum is None or value <= maximum):
            return int(value)
        raise _expected(f"a whole number from {minimum}{upto}", value)

    return convert


def _size(minimum: int) -> Convert:
    what = f'a size of at least {minimum} (bytes, or like "512m", "8g")'

    def convert(value: Any, ctx: _Ctx) -> int:
        if isinstance(value, str):
            try:
                value = parse_size(value)
            except ValueError as exc:
                raise _Invalid(f"expected {what}; {exc}") from None
        if _is_int(value) and value >= minimum:
            return int(value)
        raise _expected(what, value)

    return convert


def _cpus(value: Any, ctx: _Ctx) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and 0 < value < 1 << 16:  # the comparisons also reject nan and inf
        return float(value)
    raise _expected("a number of CPUs above 0, like 2 or 0.5", value)


def _choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Convert:
    shown = [_show(c) for c in choices]
    what = ", ".join(shown[:-1]) + " or " + shown[-1]

    def convert(value: Any, ctx: _Ctx) -> str:
        if isinstance(value, str) and value in choices:
            return value
        if isinstance(value, str) and aliases and value in aliases:
            return aliases[value]
        raise _expected(what, value)

    return convert


def _pattern(pattern: str, what: str) -> Convert:
    def convert(value: Any, ctx: _Ctx) -> str:
        if isinstance(value, str) and re.fullmatch(pattern, value, re.IGNORECASE):
            return value
        raise _expected(what, value)

    return convert


def _list(item: Convert, what: str) -> Convert:
    """A TOML array whose items each pass ``item``; errors name the item, from 1."""

    def convert(value: Any, ctx: _Ctx) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _expected(f"a list of {what}", value)
        out = []
        for i, entry in enumerate(value):
            try:
                out.append(item(entry, ctx))
            except _Invalid as exc:
                raise _Invalid(f"item {i + 1}: {exc.reason}", exc.hint, i) from None
        return tuple(out)

    return convert


def _host_path(value: Any, ctx: _Ctx) -> Path:
    if isinstance(value, str) and (value == "~" or value.startswith("~/")):
        return ctx.home / value[2:]
    if isinstance(value, str) and value and not value.startswith("~"):
        return ctx.base / value  # an absolute value replaces base
    raise _expected("a path (~/…, /… or relative to the file's directory)", value)


def _box_path(value: Any, ctx: _Ctx) -> PurePosixPath:
    parts = value.split("/") if isinstance(value, str) else []
    if not isinstance(value, str) or not value.startswith("/") or ".." in parts:
        raise _expected('an absolute path in the box, without ".."', value)
    return PurePosixPath("/", *[p for p in parts if p not in ("", ".")])


def _env_value(value: Any, ctx: _Ctx) -> str:
    if not isinstance(value, str):
        hint = f'quote it: "{_show(value)}"'
        raise _Invalid(f"expected a string, got {_show(value)}", hint)
    if value.startswith("${") and not re.fullmatch(_VAR_REF, value):
        raise _expected('"${NAME}" with NAME made of letters, digits and _', value)
    return value


def _gpu(value: Any, ctx: _Ctx) -> int | str:
    if _is_int(value) and value >= 0:
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"(GPU|MIG)-[A-Za-z0-9/-]+", value):
        return value
    what = "an index (0, 1, …) or a UUID (GPU-…, MIG-…)"
    raise _Invalid(f"expected {what}, got {_show(value)}", "nvidia-smi -L lists them")


def _gpu_devices(value: Any, ctx: _Ctx) -> str | tuple[int | str, ...]:
    if isinstance(value, list) and value:
        return tuple(_list(_gpu, "GPUs")(value, ctx))
    if value in ("all", "none") and isinstance(value, str):
        return value
    raise _Invalid(
        f'expected "all", "none" or a list of GPU indices/UUIDs, got {_show(value)}',
        hint='for example devices = [0, 2]; "none" means no GPUs',
    )


def _mount_item(value: Any, ctx: _Ctx) -> MountSpec:
    if isinstance(value, MountSpec):  # already parsed by the CLI (-v)
        return value
    if isinstance(value, str):
        return _mount(value, ctx)
    # coop's table form: { host = "~/.bashrc", container = "~/.bashrc" }.
    if isinstance(value, dict) and sorted(value) == ["container", "host"]:
        host, box = value["host"], value["container"]
        if isinstance(host, str) and isinstance(box, str):
            source, volume = _mount_source(host, f"{host}:{box}", ctx)
            return MountSpec(source, volume, _mount_target(box, f"{host}:{box}"))
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
        "image": _string,  # "host", an image reference, a directory or a tarball
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
        "ports": _list(_pattern(rf"({_PORT}:)?{_PORT}(/(tcp|udp))?", '"8080:80"'), "ports"),
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

# -- The result; field defaults are the built-in layer ------------------------------


class SandboxConfig(NamedTuple):
    """``[sandbox]`` and ``[[mount]]``: what runs in the box and what it sees."""

    image: str = "host"
    agent: str | None = None  # None: a login shell
    args: tuple[str, ...] = ()
    shell: str | None = None
    user: str | None = None
    setup: tuple[str, ...] = ()
    mounts: tuple[MountSpec, ...] = ()  # per layer: [sandbox] mounts, then [[mount]]
    shm: int | None = None  # None: decided when the box is planned
    tmp_size: int | None = None


class WorkspaceConfig(NamedTuple):
    """``[workspace]``: the project directory and how it appears in the box."""

    root: Path  # the host directory, where coop.toml is (not a key)
    path: PurePosixPath  # where it appears inside; default: root's own path
    git: str = "default"
    mode: str = "rw"
    worktree_dir: Path | None = None
    mount: Path | None = None


class AgentConfig(NamedTuple):
    """``[agent]``."""

    pass_env: tuple[str, ...] = ()


class SessionConfig(NamedTuple):
    """``[session]``: what the keeper does."""

    auto_restart: bool = False
    restart_delay_ms: int = 1000
    scrollback: int = 256 << 10
    detach_keys: str = "ctrl-]"
    log_max: int = 10 << 20
    persist: tuple[str, ...] = ()


class NetworkConfig(NamedTuple):
    """``[network]``."""

    mode: str = "private"
    allow: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    oauth_ports: tuple[int, ...] = ()


class GpuConfig(NamedTuple):
    """``[gpu]``: ``devices`` is "all", "none" or a tuple of indices and UUIDs."""

    devices: str | tuple[int | str, ...] = "all"
    exclusive: bool = False


class LimitsConfig(NamedTuple):
    """``[limits]``: memory in bytes; None is no limit."""

    pids: int = 4096
    memory: int | None = None
    cpus: float | None = None
    nofile: int | None = None


class SecurityConfig(NamedTuple):
    """``[security]``."""

    seccomp: bool = True
    nested_userns: bool = False


class ImageConfig(NamedTuple):
    """``[image]``."""

    insecure: bool = False
    platform: str | None = None


class CondaConfig(NamedTuple):
    """``[conda]``."""

    env: str | None = None
    root: Path | None = None


class StorageConfig(NamedTuple):
    """``[storage]``."""

    root: Path | None = None


class InputFilterConfig(NamedTuple):
    """coop's ``[input_filter]``, accepted so its files load."""

    ctrl_c_debounce_ms: int = 500
    block_sequences: tuple[str, ...] = ()


class Config(NamedTuple):
    """The merged configuration, and where each key came from.

    ``origin`` maps dotted keys (``"network.mode"``, ``"env.TOKEN"``,
    ``"sandbox.mounts[2]"``) to (the file as given, line), or (:data:`CLI_ORIGIN`,
    None); keys left at their defaults are absent.
    """

    sandbox: SandboxConfig
    workspace: WorkspaceConfig
    env: Mapping[str, str]
    agent: AgentConfig = AgentConfig()
    session: SessionConfig = SessionConfig()
    network: NetworkConfig = NetworkConfig()
    gpu: GpuConfig = GpuConfig()
    limits: LimitsConfig = LimitsConfig()
    security: SecurityConfig = SecurityConfig()
    image: ImageConfig = ImageConfig()
    conda: CondaConfig = CondaConfig()
    storage: StorageConfig = StorageConfig()
    input_filter: InputFilterConfig = InputFilterConfig()
    sources: tuple[Path, ...] = ()
    origin: Mapping[str, Origin] = {}  # noqa: RUF012 - never mutated

    def keys_from(self, file: Path) -> tuple[str, ...]:
        """Return the dotted keys whose value ``file`` set (for ``coopy trust``)."""
        return tuple(k for k, (f, _) in self.origin.items() if f == str(file))


_SECTIONS: Final[Mapping[str, type]] = {
    "agent": AgentConfig, "session": SessionConfig, "network": NetworkConfig,
    "gpu": GpuConfig, "limits": LimitsConfig, "security": SecurityConfig,
    "image": ImageConfig, "conda": CondaConfig, "storage": StorageConfig,
    "input_filter": InputFilterConfig,
}  # fmt: skip

# -- Loading ------------------------------------------------------------------------


class _Layer:
    """One file's (or the command line's) settings, checked and converted."""

    def __init__(self, file: str, shown: str | None) -> None:
        self.file = file  # as given, for Config.origin
        self.shown = shown  # for messages: relative to the cwd inside it; None: flags
        self.lines: dict[str, int] = {}  # dotted path -> line, from _Scanner
        self.values: dict[str, Any] = {}  # dotted key -> converted value
        self.origin: dict[str, Origin] = {}
        self.mounts: list[tuple[MountSpec, Origin]] = []

    def where(self, path: str) -> Origin:
        """(file, line) of ``path``, else of the nearest enclosing key or table."""
        while path and path not in self.lines:
            cut = path.rindex("[") if path.endswith("]") else path.rfind(".")
            path = path[: max(cut, 0)]
        return self.file, self.lines.get(path)

    def error(
        self, message: str, path: str, key: str | None, hint: str | None = None
    ) -> ConfigError:
        line = self.where(path)[1]
        return ConfigError(message, hint, file=self.shown, line=line, key=key)


def load_config(
    workspace: Path,
    project_file: Path | None,
    *,
    user_file: Path | None | Literal["default"] = "default",
    cli: Mapping[str, Any] | None = None,
) -> Config:
    """Load defaults < ``user_file`` < ``project_file`` < ``cli`` into a Config.

    ``user_file`` defaults to :func:`user_config_path`, skipped when missing; None
    skips it.  ``cli`` holds dotted keys (``{"network.mode": "none", "env": {...},
    "sandbox.mounts": [...]}``): None values are ignored, mounts and env add to the
    files', other values replace theirs.  Raises ConfigError, pointing at the line.
    """
    home = Path.home()
    if isinstance(user_file, str):
        user_file = user_config_path()
        user_file = user_file if user_file.exists() else None
    layers = [_load_file(f, home) for f in (user_file, project_file) if f is not None]
    sources = tuple(Path(layer.file) for layer in layers)
    if cli:
        layers.append(_cli_layer(cli, home))
    values: dict[str, Any] = {}
    origin: dict[str, Origin] = {}
    mounts: list[tuple[MountSpec, Origin]] = []
    for layer in layers:
        for key, value in layer.values.items():
            add = key in ADDITIVE and key in values
            values[key] = values[key] + value if add else value
            origin[key] = layer.origin[key]
        mounts.extend(layer.mounts)
    origin.update((f"sandbox.mounts[{i}]", o) for i, (_, o) in enumerate(mounts))

    def section(table: str) -> dict[str, Any]:
        split = (k.partition(".") for k in values)
        return {key: values[f"{t}.{key}"] for t, _, key in split if t == table}

    root = workspace.resolve()
    return Config(
        sandbox=SandboxConfig(**section("sandbox"), mounts=tuple(m for m, _ in mounts)),
        workspace=WorkspaceConfig(
            **{"root": root, "path": PurePosixPath(root)} | section("workspace")
        ),
        env=MappingProxyType(section("env")),
        **{name: cls(**section(name)) for name, cls in _SECTIONS.items()},
        sources=sources,
        origin=MappingProxyType(origin),
    )


def _display(path: Path) -> str:
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.getcwd()))
    except (ValueError, OSError):  # outside the cwd, or the cwd was removed
        return str(path)


def _load_file(path: Path, home: Path) -> _Layer:
    layer = _Layer(str(path), _display(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot read: {reason}", file=layer.shown) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (byte 0x{data[exc.start]:02x})"
        hint = "save it as UTF-8"
        raise ConfigError(message, hint, file=layer.shown, line=line) from None
    toml = _toml_module()
    try:
        doc = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        # tomllib ends its message with "(at line L, column C)" or, for some errors,
        # "(at end of document)": the line moves to the front, as in all our errors.
        message = str(exc)
        at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
        line = int(at.group(1)) if at else max(len(text.splitlines()), 1)
        if at:
            message = f"{message[: at.start()]} (column {at.group(2)})"
        message = f"invalid TOML: {message}"
        raise ConfigError(message, file=layer.shown, line=line) from None
    with contextlib.suppress(ValueError):  # that loses line numbers, nothing else
        _Scanner(text, layer.lines).run()
    _check(layer, doc, _Ctx(path.parent, home))
    return layer


def _toml_module() -> Any:
    # Imported here so that importing coopy.config stays cheap (STYLE rule 13).
    import importlib

    try:
        return importlib.import_module("tomllib")
    except ModuleNotFoundError:  # an older Python with the backport installed
        return importlib.import_module("tomli")


def _cli_layer(cli: Mapping[str, Any], home: Path) -> _Layer:
    layer = _Layer(CLI_ORIGIN, None)
    doc: dict[str, Any] = {}
    for dotted, value in cli.items():
        table, _, key = dotted.partition(".")
        if value is None:
            continue
        if key:
            doc.setdefault(table, {})[key] = value
        elif isinstance(value, Mapping):  # "env": {...}
            doc.setdefault(table, {}).update(value)
        else:
            raise ConfigError(f"unknown setting {dotted!r}")
    _check(layer, doc, _Ctx(Path.cwd(), home))
    return layer


def _nearest(word: str, choices: Iterable[str]) -> str | None:
    import difflib  # only on the error path

    words = [c for c in choices if c != "*"]
    near = difflib.get_close_matches(word, words, n=1, cutoff=0.6)
    return near[0] if near else None


def _check(layer: _Layer, doc: Mapping[str, Any], ctx: _Ctx) -> None:
    """Check every table and key of ``doc`` against SCHEMA, into ``layer``."""
    for table, body in doc.items():
        if table not in SCHEMA and not isinstance(body, dict | list):
            owner = {k: f"[{t}] {k}" for t, keys in SCHEMA.items() for k in keys}
            near = _nearest(table, owner)
            tip = f"; did you mean {owner[near]}?" if near else ""
            message = f'unknown key "{table}" outside any table{tip}'
            raise layer.error(message, table, None, "keys go under a [table]")
        if table not in SCHEMA:
            near = _nearest(table, SCHEMA)
            tip = f"; did you mean [{near}]?" if near else ""
            tables = ", ".join(f"[{t}]" for t in SCHEMA)
            message = f"unknown table [{table}]{tip}"
            raise layer.error(message, table, None, f"the tables are {tables}")
        if table in ARRAY_TABLES:
            if not (isinstance(body, list) and all(isinstance(e, dict) for e in body)):
                message = f"expected [[{table}]] tables, got {_show(body)}"
                raise layer.error(message, table, f"[{table}]")
            for i, entry in enumerate(body):
                spec = _mount_table(layer, f"{table}[{i}]", entry, ctx)
                layer.mounts.append((spec, layer.where(f"{table}[{i}]")))
        elif not isinstance(body, dict):
            homes = [f"[{t}] {table}" for t, keys in SCHEMA.items() if table in keys]
            hint = f"did you mean {homes[0]}?" if homes else None
            message = f"expected a table, got {_show(body)}"
            raise layer.error(message, table, f"[{table}]", hint)
        else:
            for key, value in body.items():
                path = f"{table}.{key}"
                converted = _convert(layer, f"[{table}]", path, key, value, ctx)
                if path == "sandbox.mounts":
                    for i, spec in enumerate(converted):
                        layer.mounts.append((spec, layer.where(f"{path}[{i}]")))
                else:
                    layer.values[path] = converted
                    layer.origin[path] = layer.where(path)
    if "sandbox.command" in layer.values:
        if "sandbox.agent" in layer.values:
            hint = '"command" is coop\'s older name for "agent": keep one of them'
            message = 'both "agent" and "command" are set'
            raise layer.error(message, "sandbox.command", "[sandbox] command", hint)
        layer.values["sandbox.agent"] = layer.values.pop("sandbox.command")
        layer.origin["sandbox.agent"] = layer.origin.pop("sandbox.command")


def _convert(layer: _Layer, label: str, path: str, key: str, value: Any, ctx: _Ctx) -> Any:
    """Check one key of the table ``label`` ("[gpu]") and convert its value."""
    kinds = SCHEMA[label.strip("[]")]
    convert = kinds.get(key) or kinds.get("*")
    if convert is None:
        near = _nearest(key, kinds)
        tip = f'; did you mean "{near}"?' if near else ""
        message = f'unknown key "{key}" in {label}{tip}'
        raise layer.error(message, path, None, f"{label} takes " + ", ".join(kinds))
    if "*" in kinds and not re.fullmatch(_VAR_NAME, key):
        hint = "a name is letters, digits and _, not starting with a digit"
        raise layer.error("not a valid variable name", path, f"{label} {key}", hint)
    try:
        return convert(value, ctx)
    except _Invalid as exc:
        where = path if exc.index is None else f"{path}[{exc.index}]"
        raise layer.error(exc.reason, where, f"{label} {key}", exc.hint) from None


def _mount_table(layer: _Layer, path: str, entry: Mapping[str, Any], ctx: _Ctx) -> MountSpec:
    got = {
        key: _convert(layer, "[[mount]]", f"{path}.{key}", key, value, ctx)
        for key, value in entry.items()
    }
    for needed in ("source", "target"):
        if needed not in got:
            raise layer.error(f'missing "{needed}"', path, "[[mount]]")
    spec, key = f"{got['source']}:{got['target']}", "source"
    try:
        source, volume = _mount_source(got["source"], spec, ctx)
        key = "target"
        target = _mount_target(got["target"], spec)
    except _Invalid as exc:
        where = f"{path}.{key}"
        raise layer.error(exc.reason, where, f"[[mount]] {key}", exc.hint) from None
    return MountSpec(source, volume, target, got.get("ro", False))


# -- Line numbers --------------------------------------------------------------------
# tomllib reports no positions for keys, so this walks the text (already known to be
# valid TOML) and records the line of each table, key and array item, by dotted path:
# "sandbox.image", "mount[1].target", "sandbox.mounts[2]".  It must skip strings and
# arrays as a whole, or a multi-line string holding "[x]" would read as a table.


class _Scanner:
    _BARE = r"[A-Za-z0-9_-]+"
    _SCALAR = r"[^,\]}#\n]+"  # numbers, booleans, dates

    def __init__(self, text: str, lines: dict[str, int]) -> None:
        self.text, self.pos, self.line, self.lines = text, 0, 1, lines
        self.arrays: dict[str, int] = {}  # [[name]] headers seen so far

    def advance(self, n: int = 1) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def skip(self, newlines: bool) -> None:
        while (c := self.peek()) in (" ", "\t", "\r", "#") or (newlines and c == "\n"):
            end = self.text.find("\n", self.pos) if c == "#" else self.pos + 1
            self.advance((len(self.text) if end < 0 else end) - self.pos)

    def run(self) -> None:
        table = ""
        while True:
            self.skip(True)
            if not self.peek():
                return
            if self.peek() != "[":
                self.pair(table)
                continue
            line, double = self.line, self.text.startswith("[[", self.pos)
            self.advance(2 if double else 1)
            table = ".".join(self.key())
            self.advance(2 if double else 1)
            if double:
                self.arrays[table] = self.arrays.get(table, -1) + 1
                table = f"{table}[{self.arrays[table]}]"
            self.lines.setdefault(table, line)

    def pair(self, prefix: str) -> None:
        line, parts = self.line, [prefix] if prefix else []
        for part in self.key():  # a dotted key also places the tables it names
            parts.append(part)
            self.lines.setdefault(".".join(parts), line)
        self.advance()  # "="
        self.value(".".join(parts))

    def key(self) -> list[str]:
        parts = []
        while True:
            self.skip(False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            elif bare := re.compile(self._BARE).match(self.text, self.pos):
                parts.append(bare.group())
                self.advance(bare.end() - self.pos)
            else:
                raise ValueError(f"no key at offset {self.pos}")
            self.skip(False)
            if self.peek() != ".":
                break
            self.advance()
        return parts

    def string(self) -> str:
        quote = self.peek()
        delim = quote * 3 if self.text.startswith(quote * 3, self.pos) else quote
        self.advance(len(delim))
        start = self.pos
        while not self.text.startswith(delim, self.pos):
            if self.pos >= len(self.text):
                raise ValueError("unterminated string")
            self.advance(2 if quote == '"' and self.peek() == "\\" else 1)
        content = self.text[start : self.pos]  # escapes kept: only quoted keys use it
        self.advance(len(delim))
        while len(delim) == 3 and self.peek() == quote:  # '''a'''' holds a'
            self.advance()
        return content

    def value(self, path: str) -> None:
        self.skip(False)
        opening = self.peek()
        if opening in ('"', "'"):
            self.string()
            return
        if opening not in ("[", "{"):
            scalar = re.compile(self._SCALAR).match(self.text, self.pos)
            self.advance(scalar.end() - self.pos if scalar else 1)
            return
        closing, index = ("]" if opening == "[" else "}"), 0
        self.advance()
        while True:
            self.skip(True)
            if self.peek() == closing:
                break
            before = self.pos
            if opening == "{":
                self.pair(path)
            else:
                self.lines.setdefault(f"{path}[{index}]", self.line)
                self.value(f"{path}[{index}]")
                index += 1
            self.skip(True)
            if self.peek() == ",":
                self.advance()
            if self.pos == before or not self.peek():
                raise ValueError(f"no progress at offset {self.pos}")
        self.advance()
