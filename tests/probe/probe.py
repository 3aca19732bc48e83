#!/usr/bin/env python3
"""Run inside a box: print what the box looks like from inside, as JSON.

Tests compare this with what the user asked for (STYLE.md rule 21).  Standard library
only: it runs on whatever python3 the box's image has.
"""

import json
import os
import socket
import sys


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as exc:
        return f"<{exc.strerror}>"


def mounts():
    out = []
    for line in read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        out.append({"target": f[4], "options": f[5].split(","), "fstype": r[0],
                    "super": r[2].split(",") if len(r) > 2 else []})
    return out


def status_field(name):
    for line in read("/proc/self/status").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def pids():
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


def main():
    info = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "euid": os.geteuid(),
        "groups": os.getgroups(),
        "uid_map": read("/proc/self/uid_map").split("\n")[:-1],
        "gid_map": read("/proc/self/gid_map").split("\n")[:-1],
        "hostname": socket.gethostname(),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pid1_comm": read("/proc/1/comm").strip(),
        "pids": pids(),
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "env": dict(os.environ),
        "mounts": mounts(),
        "cap_eff": status_field("CapEff"),
        "cap_bnd": status_field("CapBnd"),
        "no_new_privs": status_field("NoNewPrivs"),
        "seccomp": status_field("Seccomp"),
        "isatty": [os.isatty(i) for i in range(3)],
        "ttyname": os.ttyname(0) if os.isatty(0) else None,
        "sid_is_pid": os.getsid(0) == os.getpid(),
        "etc_passwd": read("/etc/passwd"),
        "etc_hostname": read("/etc/hostname").strip(),
    }
    for extra in sys.argv[1:]:
        info.setdefault("paths", {})[extra] = {
            "exists": os.path.lexists(extra),
            "readable": os.access(extra, os.R_OK),
            "writable": os.access(extra, os.W_OK),
        }
    json.dump(info, sys.stdout)
    sys.stdout.write("\n")


main()
