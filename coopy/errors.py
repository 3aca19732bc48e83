"""One exception hierarchy for everything coopy reports to a user.

Every error carries a message (what failed and why) and an optional hint (what to do).
The CLI prints ``coopy: <message>`` then ``hint: <hint>`` and exits 125; no traceback
unless ``--debug`` is given.  Context is added on the way up with ``raise X(...) from exc``
(see :func:`CoopyError.within`), so a final message reads from intent down to the syscall:
``starting box "web": mounting /home/u/proj → /home/u/proj (bind, rw): mount: EACCES``.
"""

from __future__ import annotations

STATE_FS_HINT = (
    "coopy's state directory must be on a local filesystem that can hold overlay upper "
    "dirs (ext4, xfs, btrfs, tmpfs; not NFS, not overlayfs as in a container): set "
    "COOPY_HOME to a directory on one"
)


class CoopyError(Exception):
    """Base of every error coopy reports to a user."""

    exit_code = 125

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def within(self, context: str) -> CoopyError:
        """Return a copy of this error whose message is prefixed with ``context: ``."""
        err = type(self).__new__(type(self))
        err.__dict__.update(self.__dict__)
        Exception.__init__(err, f"{context}: {self.message}")
        err.message = f"{context}: {self.message}"
        return err


class ConfigError(CoopyError):
    """A configuration file or a command-line option is wrong.

    ``file``/``line``/``key`` locate the problem; the message is rendered as
    ``coop.toml:14: [gpu] devices: expected …, got …``.
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        if key is not None:
            where += f"{key}: "
        super().__init__(where + message, hint)
        self.file = file
        self.line = line
        self.key = key


class HostError(CoopyError):
    """The host cannot do what was asked (user namespaces off, no newuidmap, …)."""


class SetupError(CoopyError):
    """Building the box failed at one step of the plan; ``op`` is the step."""

    def __init__(self, message: str, hint: str | None = None, *, op: object = None) -> None:
        super().__init__(message, hint)
        self.op = op


class ImageError(CoopyError):
    """An image cannot be found, fetched or unpacked."""


class BoxStateError(CoopyError):
    """A verb does not apply to a box in its current state."""


class CommandError(CoopyError):
    """The box's command cannot be run (exit 126) or was not found (exit 127)."""

    def __init__(self, message: str, hint: str | None = None, *, exit_code: int = 126) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code
