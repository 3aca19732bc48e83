"""``coopy ls``: your boxes, from their records; no daemon is asked."""

from __future__ import annotations

import argparse
import time

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy ls
  coopy ls --json          name, workspace, state, uptime, clients, shells, image,
                           gpus, network, ports, agent, worktree, pid, exit_status
"""


def parser() -> Parser:
    """The argument parser of ``coopy ls``."""
    p = Parser("coopy ls", "List your boxes.", EPILOG)
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args: argparse.Namespace) -> int:
    """Print the boxes."""
    import json

    from coopy.lifecycle import list_boxes

    now = time.time()
    rows: list[dict[str, object]] = []
    for record, clients, shells in list_boxes():
        running = record.state == "running"
        rows.append({
            "name": record.name, "workspace": record.workspace, "state": record.state,
            "uptime": round(now - record.started, 1) if running else None,
            "clients": clients, "shells": shells, "image": record.image,
            "gpus": list(record.gpus), "network": record.network, "ports": list(record.ports),
            "agent": record.agent or None, "worktree": record.worktree or None,
            "pid": record.keeper_pid if running else None,
            "exit_status": record.exit_status,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from coopy.gpubox import held_locks

    held = held_locks()  # [gpu] exclusive: any user's box, `coopy run` included
    if not rows:
        print("no boxes (`coopy` in a project creates one)")
    else:
        print(f"{'NAME':<20} {'STATE':<9} {'UPTIME':>8} {'CLIENTS':>7}  {'NETWORK':<8} "
              f"{'AGENT':<8} WORKSPACE")
    for r in rows:
        state = str(r["state"])
        if r["exit_status"] is not None and state != "running":
            state = f"exited({r['exit_status']})"
        up = r["uptime"]
        uptime = f"{int(up)}s" if isinstance(up, float) else "-"
        shown = str(r["clients"]) if r["clients"] is not None else "-"
        net = str(r["network"])
        ports = r["ports"]
        extra = f"  ports {', '.join(ports)}" if isinstance(ports, list) and ports else ""
        gpus = r["gpus"]
        extra += f"  gpus {','.join(gpus)}" if isinstance(gpus, list) and gpus else ""
        where = r["worktree"] or r["workspace"]
        print(f"{r['name']:<20} {state:<9} {uptime:>8} {shown:>7}  {net:<8} "
              f"{r['agent'] or '-':<8} {where}{extra}")
    for lock, holder in held:
        print(f"GPU {lock}: held by {holder}")
    return 0
