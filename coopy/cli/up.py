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

The box is named after the workspace (the directory of the nearest coop.toml, else
the current one) and keeps running when you detach (Ctrl+]) or close the terminal;
`coopy ls` lists boxes, `coopy kill` stops one, `coopy rm` removes it.  The agent is
[sandbox] agent from coop.toml, else a login shell.
"""


def parser() -> Parser:
    """The argument parser of ``coopy`` with no verb."""
    p = Parser("coopy", "Create the project's box if needed and attach to its agent.", EPILOG)
    add_box_options(p)
    p.add_argument("-d", "--detach", action="store_true", help="create it, do not attach")
    p.add_argument("-n", "--name", help="the box's name (default: from the workspace)")
    p.add_argument("--detach-keys", default=None, metavar="KEY",
                   help="the key that detaches (default ctrl-])")
    p.add_command()
    return p


def run(args: argparse.Namespace) -> int:
    """Create or find the box, then attach (unless -d)."""
    import shlex

    from coopy.cli.run import build_request
    from coopy.client import attach, parse_detach_key
    from coopy.lifecycle import box_name, create

    command = command_of(args)
    request, config = build_request(args, command)
    if not command:
        agent = config.sandbox.agent
        command = shlex.split(agent) + list(config.sandbox.args) if agent else ["sh", "-l"]
        shell = config.sandbox.shell
        if not agent and shell:
            command = [shell, "-l"]
        request = request._replace(command=command)
    # checked before anything starts: a bad key must not leave a box behind
    key = parse_detach_key(args.detach_keys or config.session.detach_keys)
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
