"""``coopy gpu``: what a box would get of the host's GPUs, and why."""

from __future__ import annotations

import argparse

from coopy.cli._args import Parser

EPILOG = """\
examples:
  coopy gpu                 the GPUs, driver, libraries and binaries a box gets
  coopy gpu --gpus 1        what `coopy run --gpus 1` would pass in
  coopy gpu --json          the same, for scripts

Found without the NVIDIA container toolkit: device nodes in /dev, the driver version
in /proc/driver/nvidia, the libraries from the loader's cache and libcuda's directory;
a CDI spec (/etc/cdi, /var/run/cdi) is used instead when one exists and is current.
NVIDIA_VISIBLE_DEVICES, CUDA_VISIBLE_DEVICES and Slurm's allocation are respected.
COOPY_GPU_ROOT=DIR reads all of it from another tree (tests).
"""


def parser() -> Parser:
    """The argument parser of ``coopy gpu``."""
    p = Parser("coopy gpu", "Show what a box would get of this host's GPUs.", EPILOG)
    p.add_argument("--gpus", metavar="all|none|0,2|GPU-UUID", help="the selection to show")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def report(selection: str | None) -> dict[str, object]:
    """Everything ``coopy gpu`` prints, as data."""
    import os

    from coopy.gpu import allowed_gpus, box_env, discover, parse_gpus, select_gpus
    from coopy.gpubox import held_locks, sonames

    host = discover()
    allowed, why = allowed_gpus(host.gpus, os.environ, host.vendor)
    request = parse_gpus(selection) if selection else None
    chosen = select_gpus(host, request, os.environ)
    return {
        "root": host.root,
        "source": host.source,
        "vendor": host.vendor,
        "driver_version": host.driver,
        "library_version": host.lib_version,
        "gpus": [{**g._asdict(), "allowed": g in allowed, "selected": g in chosen}
                 for g in host.gpus],
        "restricted_by": why or None,
        "device_nodes": list(host.control) + [g.node for g in chosen],
        "libraries": [f._asdict() for f in host.libraries],
        "links": sonames(host),
        "binaries": [f._asdict() for f in host.binaries],
        "firmware": list(host.firmware),
        "sockets": list(host.sockets),
        "env": box_env(chosen, host, os.environ) if chosen else {},
        "held": [{"lock": lock, "holder": holder} for lock, holder in held_locks()],
        "problems": list(host.problems),
    }


def run(args: argparse.Namespace) -> int:
    """Print the report; 0 even without GPUs (that is an answer, not a failure)."""
    import json

    from coopy.gpu import GPU_BIN_DIR, GPU_LIB_DIR

    data = report(args.gpus)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"source:   {data['source']} (root {data['root']})")
    print(f"driver:   {data['driver_version'] or '-'} (libcuda {data['library_version'] or '-'})")
    gpus = data["gpus"]
    assert isinstance(gpus, list)
    if not gpus:
        print("GPUs:     none (no /dev/nvidiactl, /dev/dxg or /dev/kfd)")
        for problem in data["problems"]:  # type: ignore[attr-defined]
            print(f"problem:  {problem}")
        return 0
    for g in gpus:
        mark = "passed in" if g["selected"] else (
            "not selected" if g["allowed"] else "not yours")
        print(f"GPU {g['index']}:    {g['node']}  {g['uuid'] or '-'}  "
              f"{g['model'] or ''}  [{mark}]")
    if data["restricted_by"]:
        print(f"limited by: {data['restricted_by']}")
    print("nodes:    " + (" ".join(data["device_nodes"]) or "-"))  # type: ignore[arg-type]
    libs = data["libraries"]
    assert isinstance(libs, list)
    print(f"libraries ({len(libs)}, read-only in {GPU_LIB_DIR}, listed in the box's ld cache):")
    for f in libs:
        print(f"  {f['name']:<40} {f['soname'] or '-':<28} {f['why']}: {f['source']}")
    bins = data["binaries"]
    assert isinstance(bins, list)
    print(f"binaries (in {GPU_BIN_DIR}, on PATH): "
          + (" ".join(b["name"] for b in bins) or "-"))
    env = data["env"]
    assert isinstance(env, dict)
    for key, value in env.items():
        print(f"env:      {key}={value}")
    for held in data["held"]:  # type: ignore[attr-defined]
        print(f"held:     GPU {held['lock']} by {held['holder']}")
    for problem in data["problems"]:  # type: ignore[attr-defined]
        print(f"problem:  {problem}")
    return 0
