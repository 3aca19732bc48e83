"""``coopy trust``: approve the nearest coop.toml as it is now, printing what it grants."""

from __future__ import annotations

import argparse
from pathlib import Path

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy trust              approve ./coop.toml (or the nearest one above)
  coopy trust --revoke     forget the approval
  coopy trust --json       approve it, and print what it grants as JSON

A project's coop.toml applies its settings at once, except those that widen the box
beyond its workspace: mounts from outside it, the host's network or an allow list,
host variables in [env] or [agent] pass_env, relaxed [security], git = "rw".  Those
apply only once you approve the file's exact content here; if the file changes (the
agent can edit it), approve it again.
"""


def parser() -> Parser:
    """The argument parser of ``coopy trust``."""
    p = Parser("coopy trust", "Approve the nearest coop.toml and what it grants.", EPILOG)
    p.add_argument("-w", "--workspace", metavar="DIR", type=Path,
                   help="look for coop.toml from DIR (default: the current directory)")
    p.add_argument("--revoke", action="store_true", help="forget the approval")
    p.add_argument("--json", action="store_true",
                   help="approve, and print the grants as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    """Print the grants and record (or revoke) the approval."""
    import json

    from coopy.config import find_workspace, load_config
    from coopy.errors import ConfigError
    from coopy.trust import owned_acceptably, project_grants, record_trust, revoke_trust

    workspace, project = find_workspace((args.workspace or Path.cwd()).expanduser())
    if project is None:
        raise ConfigError("no coop.toml here or in a parent directory",
                          hint="`coopy trust` approves a project's coop.toml; there is none")
    if not owned_acceptably(project):
        raise ConfigError(f"{project} belongs to another user: coopy never reads it",
                          hint="copy it, review it, and own the copy")
    if args.revoke:
        had = revoke_trust(project)
        print(f"{'revoked' if had else 'was not trusted'}: {project}")
        return 0
    config = load_config(workspace, project, user_file=None)
    grants = project_grants(config, project, workspace)
    digest = record_trust(project)
    if args.json:
        print(json.dumps({"file": str(project), "sha256": digest,
                          "grants": [g._asdict() for g in grants]}, indent=2))
        return 0
    print(f"trusted {project} (sha256 {digest[:16]}…)")
    if grants:
        print("it grants:")
        for g in grants:
            print(f"  line {g.line}: {g.what}")
    else:
        print("it grants nothing beyond its workspace")
    return 0
