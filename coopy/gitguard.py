"""``[workspace] git = "ro"``: ``git push`` fails before anything reaches the remote.

A read-only ``.git`` alone does not stop a push: git sends the objects, the remote
accepts them, and only then does the local ref update fail.  So the box's system
gitconfig (``/etc/gitconfig``, in the read-only /etc of the box, which the agent cannot
edit) rewrites every push URL: ``url.<X>.pushInsteadOf = ""`` matches any URL, and X is
an ``ext::`` transport that prints why and fails, so no connection is ever made.  Fetch
is untouched.  Remotes with an explicit ``pushurl`` skip pushInsteadOf, so each such
URL found in the repository's config also gets an ``insteadOf`` (which does apply to
push URLs).

This is a guard rail for the agent's ordinary ``git push``, not a wall: a process in the
box can still ignore the system config (``GIT_CONFIG_NOSYSTEM=1``, ``git send-pack``, its
own git client).  What keeps a box from pushing is that it holds no credentials for the
remote: coopy never mounts ``~/.ssh`` or credential stores.
"""

from __future__ import annotations

import os
from pathlib import Path

MESSAGE = ('coopy: git push is blocked in this box: its .git is read-only '
           '([workspace] git = "ro"); push from the host')


def refusing_url(message: str = MESSAGE) -> str:
    """An ``ext::`` URL prefix whose "transport" prints ``message`` and fails.

    ext:: splits its command at spaces; ``% `` is a literal space and ``%%`` a percent
    (git-remote-ext(1)).  The trailing space makes the rewritten URL's remainder (the
    original URL) an argument of its own, ``$0`` of the shell, which ignores it.
    """
    command = f"echo '{message}' >&2; exit 1"
    return "ext::sh -c " + command.replace("%", "%%").replace(" ", "% ") + " "


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def push_urls(config_text: str) -> list[str]:
    """The ``pushurl`` values of a repository's config (a plain scan: no includes)."""
    urls = []
    for line in config_text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip().lower() == "pushurl":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            urls.append(value)
    return urls


def build_system_gitconfig(host_text: str, pushurls: list[str]) -> str:
    """The box's /etc/gitconfig: the host's, then the push block."""
    lines = [host_text.rstrip("\n")] if host_text.strip() else []
    lines += [
        "# coopy: [workspace] git = \"ro\" blocks git push (coopy/gitguard.py)",
        '[protocol "ext"]',
        "\tallow = user",
        f"[url {_quote(refusing_url())}]",
        '\tpushInsteadOf = ""',
    ]
    lines += [f"\tinsteadOf = {_quote(url)}" for url in dict.fromkeys(pushurls)]
    return "\n".join(lines) + "\n"


def write_push_block(etc_layer: Path, workspace: Path, owner: tuple[int, int] | None) -> None:
    """Write the box's /etc/gitconfig into its generated /etc layer."""
    def read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    from coopy.worktree import common_git_dir

    git_dir = common_git_dir(workspace) or workspace / ".git"
    text = build_system_gitconfig(read(Path("/etc/gitconfig")),
                                  push_urls(read(git_dir / "config")))
    path = etc_layer / "gitconfig"
    path.write_text(text)
    os.chmod(path, 0o644)
    if owner is not None:
        os.chown(path, *owner)
