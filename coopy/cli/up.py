"""``coopy`` (no verb): the project's box, created if needed, and its agent's terminal."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser, command_of
from coopy.cli.run import add_box_options

EPILOG = """\
examples:
  coopy                    create this project's box if needed, attach to its agent
  coopy -d                 create it detached (attach later with `coopy attach`)
  coopy -n review -w ~/proj
  coopy -- python3 -m http.server   a box whose agent is this command
  coopy --agent claude     Claude Code, hands-off, logged in (`coopy agents` lists presets)
  coopy -n fix --worktree --agent codex   a box with its own worktree, branch coopy/fix

The box is named after the workspace (the directory of the nearest coop.toml, else
the current one) and keeps running when you detach (Ctrl+]) or close the terminal;
`coopy ls` lists boxes, `coopy kill` stops one, `coopy rm` removes it.  The agent is
[sandbox] agent from coop.toml (a preset name or a command line), else a login shell.
"""


def parser() -> Parser:
    """The argument parser of ``coopy`` with no verb."""
    p = Parser("coopy", "Create the project's box if needed and attach to its agent.", EPILOG)
    add_box_options(p)
    p.add_argument("-d", "--detach", action="store_true", help="create it, do not attach")
    p.add_argument("-n", "--name", help="the box's name (default: from the workspace)")
    p.add_argument("--worktree", action="store_true",
                   help="give the box its own git worktree of the project (branch "
                   "coopy/NAME; needs -n NAME)")
    p.add_argument("--detach-keys", default=None, metavar="KEY",
                   help="the key that detaches (default ctrl-])")
    p.add_command()
    return p


def run(args: argparse.Namespace) -> int:
    """Create or find the box, then attach (unless -d)."""
    from coopy.cli.run import build_request
    from coopy.client import attach, parse_detach_key
    from coopy.lifecycle import box_name, create

    command = command_of(args)
    request, config = build_request(args, command)
    # --agent takes the trailing words as its arguments; without it they are the agent
    agent = args.agent or (None if command else config.sandbox.agent)
    if agent:
        from coopy.agents import apply_agent

        request = apply_agent(request, agent, command if args.agent else [],
                              config.sandbox.args)
    elif not command:
        shell = config.sandbox.shell
        request = request._replace(command=[shell, "-l"] if shell else ["sh", "-l"])
    # checked before anything starts: a bad key must not leave a box behind
    key = parse_detach_key(args.detach_keys or config.session.detach_keys)
    if args.worktree:
        if not args.name:
            from coopy.errors import ConfigError

            raise ConfigError("--worktree needs a box name", hint="coopy -n NAME --worktree")
        from coopy.worktree import apply_worktree

        request = apply_worktree(request, args.name, config.workspace.worktree_dir,
                                 keep_target="workspace.path" in config.origin)
    name = args.name or box_name(request.workspace)
    request = request._replace(hostname=args.hostname or name)
    session = config.session
    record = create(request, name, scrollback=session.scrollback, log_max=session.log_max,
                    auto_restart=session.auto_restart,
                    restart_delay=session.restart_delay_ms / 1000)
    if args.detach:
        print(f"box {record.name} is running (`coopy attach {record.name}`)")
        return 0
    return attach(record, key)
