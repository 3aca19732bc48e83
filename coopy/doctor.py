"""``coopy doctor``: what this host can do for coopy, and the fix for what it cannot.

Each check reads host facts (never changes anything) and returns a :class:`Check`
with a status: ``ok``, ``warn`` (works, with less) or ``fail`` (boxes cannot start),
plus the command that fixes it.  The last check starts a real box.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from coopy.facts import HostFacts

_NFS_MAGIC = {0x6969: "nfs", 0x794C7630: "overlayfs", 0xFF534D42: "cifs", 0x65735546: "fuse"}
CAP_SYS_RESOURCE = 24


class Check(NamedTuple):
    """One line of the report."""

    name: str
    status: str  # "ok", "warn", "fail"
    detail: str
    fix: str | None = None


def check_kernel(facts: HostFacts) -> Check:
    """Kernel features: id-mapped mounts and mount_setattr (5.12), overlay fixes (6.2)."""
    version = f"{facts.kernel[0]}.{facts.kernel[1]}"
    if facts.kernel < (5, 12):
        return Check("kernel", "fail", f"Linux {version}: coopy needs 5.12 or newer",
                     "upgrade the kernel")
    if facts.kernel < (6, 2):
        return Check("kernel", "warn", f"Linux {version}: works; 6.2+ fixes overlay "
                     "privilege bugs in user namespaces (CVE-2023-0386)", "upgrade the kernel")
    return Check("kernel", "ok", f"Linux {version}")


def check_userns(facts: HostFacts) -> Check:
    """User namespaces: the sysctls that turn them off, and Ubuntu's AppArmor restriction."""
    if facts.max_user_namespaces == 0:
        return Check("user namespaces", "fail", "user.max_user_namespaces = 0",
                     "sudo sysctl -w user.max_user_namespaces=15000")
    if facts.unprivileged_userns_clone == 0 and facts.uid != 0:
        return Check("user namespaces", "fail", "kernel.unprivileged_userns_clone = 0",
                     "sudo sysctl -w kernel.unprivileged_userns_clone=1")
    if facts.apparmor_restrict_userns == 1 and facts.uid != 0:
        return Check("user namespaces", "warn",
                     "kernel.apparmor_restrict_unprivileged_userns = 1: new user namespaces "
                     "get no capabilities without an AppArmor profile",
                     "re-run ./install.sh: it installs an AppArmor profile for coopy")
    return Check("user namespaces", "ok", f"up to {facts.max_user_namespaces}")


def check_subids(facts: HostFacts) -> Check:
    """Subordinate ids: a full box (uids 0-65535) needs 65536 of them."""
    fix = (f"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "
           f"{facts.user}")
    if facts.subuid is None or facts.subgid is None:
        if facts.uid == 0:
            return Check("subordinate ids", "fail",
                         "root has none: boxes of root run on a subordinate range",
                         fix.replace("100000-165535", "1000000-1065535"))
        return Check("subordinate ids", "warn",
                     "none in /etc/subuid or /etc/subgid: boxes have a single user", fix)
    count = min(facts.subuid.length, facts.subgid.length)
    if count < 65535:
        return Check("subordinate ids", "warn", f"only {count} ids: boxes have uids 0-{count}",
                     fix)
    return Check("subordinate ids", "ok",
                 f"uid {facts.subuid.start}+{facts.subuid.length}, "
                 f"gid {facts.subgid.start}+{facts.subgid.length}")


def check_newuidmap(facts: HostFacts) -> Check:
    """newuidmap/newgidmap must exist and be setuid root (or carry file capabilities)."""
    if facts.uid == 0:
        return Check("newuidmap", "ok", "not needed as root (root writes its maps)")
    missing = [n for n, p in (("newuidmap", facts.newuidmap), ("newgidmap", facts.newgidmap))
               if p is None]
    if missing:
        return Check("newuidmap", "fail" if facts.subuid else "warn",
                     f"{' and '.join(missing)} not found", "sudo apt install uidmap")
    for path in (facts.newuidmap, facts.newgidmap):
        assert path is not None
        st = os.stat(path)
        has_caps = _has_file_caps(path)
        if not (st.st_mode & stat.S_ISUID and st.st_uid == 0) and not has_caps:
            return Check("newuidmap", "fail", f"{path} is neither setuid root nor has "
                         "file capabilities", f"sudo chmod u+s {path}")
    return Check("newuidmap", "ok", f"{facts.newuidmap}, {facts.newgidmap}")


def _has_file_caps(path: str) -> bool:
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def check_state_fs(state: str) -> Check:
    """The state dir must hold overlay upper dirs: not NFS, CIFS, FUSE or overlayfs."""
    probe = state
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    kind = _fs_type(probe)
    if kind in _NFS_MAGIC.values():
        return Check("state directory", "fail", f"{state} is on {kind}: overlay cannot use "
                     "it as an upper layer", "set COOPY_HOME to a local directory "
                     "(ext4, xfs, btrfs or tmpfs)")
    return Check("state directory", "ok", f"{state} ({kind})")


def _fs_type(path: str) -> str:
    import ctypes
    import ctypes.util

    buf = ctypes.create_string_buffer(120)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return "unknown"
    magic = int.from_bytes(buf.raw[:8], "little")
    return _NFS_MAGIC.get(magic, {0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs",
                                  0x01021994: "tmpfs"}.get(magic, hex(magic)))


def check_cgroups() -> Check:
    """Limits: which apply through a cgroup v2 tree, which fall back to rlimits (and how to
    get cgroups delegated): coopy/cgroup.py."""
    from coopy.cgroup import describe, probe_tree

    status, detail, fix = describe(probe_tree(), os.getuid())
    return Check("cgroups", status, detail, fix)


def check_device(path: str, purpose: str) -> Check:
    """/dev/net/tun (rootless networking) and /dev/fuse: stock distributions make them 0666."""
    try:
        st = os.stat(path)
    except OSError:
        return Check(path, "warn", f"missing: {purpose} will not work",
                     f"sudo modprobe {os.path.basename(path)}")
    if not os.access(path, os.R_OK | os.W_OK):
        return Check(path, "warn", f"mode {stat.S_IMODE(st.st_mode):o}: you cannot open it, so "
                     f"{purpose} will not work (stock distributions use 0666)",
                     f"sudo chmod 666 {path} (and a udev rule to keep it)")
    mode = stat.S_IMODE(st.st_mode)
    note = "" if mode & 0o006 == 0o006 else " (stock: 666; ordinary users cannot open it)"
    return Check(path, "ok", f"mode {mode:o}{note}")


def check_network(facts: HostFacts) -> Check:
    """The default `private` network: a NAT helper installed and /dev/net/tun usable."""
    from coopy.errors import HostError
    from coopy.net import check_tun, find_backend

    try:
        name, path = find_backend("auto")
        if facts.uid != 0:
            check_tun()
    except HostError as exc:
        return Check("network", "fail", f"{exc.message}: boxes need --net none or host",
                     exc.hint)
    other = "slirp4netns" if name == "pasta" else None
    extra = ""
    if other:
        import shutil

        extra = f"; {other} also installed" if shutil.which(other) else ""
    return Check("network", "ok", f"private network through {name} ({path}){extra}")


def check_capabilities(facts: HostFacts) -> Check | None:
    """Root without CAP_SYS_RESOURCE (some containers) cannot raise rlimits for boxes."""
    if facts.uid != 0:
        return None
    try:
        with open("/proc/self/status") as f:
            eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration):
        return None
    if not eff & (1 << CAP_SYS_RESOURCE):
        return Check("capabilities", "warn", "root lacks CAP_SYS_RESOURCE (a container?): "
                     "limits above the current hard rlimits cannot be granted", None)
    return Check("capabilities", "ok", "root has CAP_SYS_RESOURCE")


def check_gpus() -> list[Check]:
    """The GPU driver, its libraries and devices (coopy/gpu.py), with fixes."""
    from coopy.gpu import discover

    host = discover()
    if host.source == "none":
        if host.driver:
            return [Check("gpu", "warn", host.problems[0], "sudo nvidia-modprobe -c=0 -u "
                          "(or load the driver: sudo modprobe nvidia)")]
        return [Check("gpu", "ok", "no GPU: boxes get none")]
    where = "" if host.root == "/" else f" under {host.root}"
    kind = {"amd": "AMD", "wsl": "WSL2 (NVIDIA through /dev/dxg)"}.get(host.vendor, "NVIDIA")
    out = [Check("gpu", "ok" if host.gpus else "warn",
                 f"{len(host.gpus)} {kind} GPU(s){where}, driver {host.driver or '?'} "
                 f"({host.source})", None if host.gpus else "sudo nvidia-modprobe -c=0 -u")]
    libcuda = any(f.name.startswith("libcuda.so.") for f in host.libraries)
    if host.vendor == "amd":
        pass  # ROCm's libraries are the image's
    elif not libcuda:
        out.append(Check("gpu libraries", "warn", "libcuda.so.<version> is not in the loader's "
                         "cache: boxes get the devices but CUDA cannot start",
                         "install the driver's user-space libraries, then `sudo ldconfig`"))
    elif host.driver and host.lib_version and host.driver != host.lib_version:
        out.append(Check("gpu libraries", "fail", f"driver/library mismatch: the kernel module "
                         f"is {host.driver}, libcuda is {host.lib_version}; CUDA fails with "
                         "'driver/library version mismatch'",
                         "reboot (or reload the nvidia kernel modules) after a driver upgrade"))
    else:
        out.append(Check("gpu libraries", "ok", f"{len(host.libraries)} libraries, libcuda "
                         f"{host.lib_version}"))
    for node in (*host.control, *(g.node for g in host.gpus)):
        if node.startswith("/dev/nvidia-caps/") or node == "/dev/nvidia-modeset":
            continue  # admin-only by design (MIG configuration) or display only
        path = host.host_path(node)
        if not os.access(path, os.R_OK | os.W_OK):
            try:
                import grp

                group = grp.getgrgid(os.stat(path).st_gid).gr_name
            except (KeyError, OSError):
                group = "its group"
            out.append(Check(node, "warn", "you cannot open it: boxes cannot use it either",
                             f"sudo usermod -aG {group} $USER (then log in again), or make "
                             "it 0666 with a udev rule"))
    for problem in host.problems:
        fix = "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`, or remove the " \
            "spec" if problem.startswith("CDI") else "sudo nvidia-modprobe -u -c=0"
        out.append(Check("gpu", "warn", problem, fix))
    return out


def check_box() -> Check:
    """Start a real box: the end-to-end proof."""
    import io
    import sys
    from pathlib import Path

    from coopy.box import run
    from coopy.errors import CoopyError
    from coopy.request import RunRequest

    saved = sys.stdin
    try:
        sys.stdin = io.StringIO()
        code = run(RunRequest(command=["true"], workspace=Path(os.environ.get("HOME", "/")),
                              tty=False))
    except CoopyError as exc:
        return Check("box", "fail", exc.message, exc.hint)
    finally:
        sys.stdin = saved
    if code != 0:
        return Check("box", "fail", f"`coopy run -- true` exited {code}", "run it with --debug")
    return Check("box", "ok", "`coopy run -- true` works")


def run_checks(facts: HostFacts, state: str, *, box: bool = True) -> list[Check]:
    """Every check, in the order a reader fixes them."""
    checks = [check_kernel(facts), check_userns(facts), check_subids(facts),
              check_newuidmap(facts), check_state_fs(state), check_cgroups(),
              check_device("/dev/net/tun", "the private network of rootless boxes"),
              check_network(facts),
              check_device("/dev/fuse", "fuse-overlayfs")]
    caps = check_capabilities(facts)
    if caps is not None:
        checks.append(caps)
    checks += check_gpus()
    if box and not any(c.status == "fail" for c in checks):
        checks.append(check_box())
    return checks
