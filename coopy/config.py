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
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

from coopy.configschema import ADDITIVE as ADDITIVE
from coopy.configschema import ARRAY_TABLES as ARRAY_TABLES
from coopy.configschema import SCHEMA as SCHEMA
from coopy.configschema import VAR_NAME, Ctx, Invalid, mount_source, mount_target, show
from coopy.configschema import MountSpec as MountSpec
from coopy.configschema import expand_env as expand_env
from coopy.configschema import parse_mount_spec as parse_mount_spec
from coopy.configschema import parse_size as parse_size
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
    backend: str = "auto"


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
    _check(layer, doc, Ctx(path.parent, home))
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
    _check(layer, doc, Ctx(Path.cwd(), home))
    return layer


def _nearest(word: str, choices: Iterable[str]) -> str | None:
    import difflib  # only on the error path

    words = [c for c in choices if c != "*"]
    near = difflib.get_close_matches(word, words, n=1, cutoff=0.6)
    return near[0] if near else None


def _check(layer: _Layer, doc: Mapping[str, Any], ctx: Ctx) -> None:
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
                message = f"expected [[{table}]] tables, got {show(body)}"
                raise layer.error(message, table, f"[{table}]")
            for i, entry in enumerate(body):
                spec = _mount_table(layer, f"{table}[{i}]", entry, ctx)
                layer.mounts.append((spec, layer.where(f"{table}[{i}]")))
        elif not isinstance(body, dict):
            homes = [f"[{t}] {table}" for t, keys in SCHEMA.items() if table in keys]
            hint = f"did you mean {homes[0]}?" if homes else None
            message = f"expected a table, got {show(body)}"
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


def _convert(layer: _Layer, label: str, path: str, key: str, value: Any, ctx: Ctx) -> Any:
    """Check one key of the table ``label`` ("[gpu]") and convert its value."""
    kinds = SCHEMA[label.strip("[]")]
    convert = kinds.get(key) or kinds.get("*")
    if convert is None:
        near = _nearest(key, kinds)
        tip = f'; did you mean "{near}"?' if near else ""
        message = f'unknown key "{key}" in {label}{tip}'
        raise layer.error(message, path, None, f"{label} takes " + ", ".join(kinds))
    if "*" in kinds and not re.fullmatch(VAR_NAME, key):
        hint = "a name is letters, digits and _, not starting with a digit"
        raise layer.error("not a valid variable name", path, f"{label} {key}", hint)
    try:
        return convert(value, ctx)
    except Invalid as exc:
        where = path if exc.index is None else f"{path}[{exc.index}]"
        raise layer.error(exc.reason, where, f"{label} {key}", exc.hint) from None


def _mount_table(layer: _Layer, path: str, entry: Mapping[str, Any], ctx: Ctx) -> MountSpec:
    got = {
        key: _convert(layer, "[[mount]]", f"{path}.{key}", key, value, ctx)
        for key, value in entry.items()
    }
    for needed in ("source", "target"):
        if needed not in got:
            raise layer.error(f'missing "{needed}"', path, "[[mount]]")
    spec, key = f"{got['source']}:{got['target']}", "source"
    try:
        source, volume = mount_source(got["source"], spec, ctx)
        key = "target"
        target = mount_target(got["target"], spec)
    except Invalid as exc:
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
