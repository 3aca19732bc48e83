"""The box's seccomp filter: a readable rules table, compiled to classic BPF here.

Default allow, explicit deny (NOTES.md (c), moby's and flatpak's lists): a box must keep
ptrace, memfd_create, the NUMA calls, io and everything CUDA, Python, Node and gdb use,
while losing the kernel surfaces that user-namespace exploits go through.  ENOSYS where
libraries have a fallback (clone3 → clone, io_uring → epoll, the new mount API → mount),
EPERM elsewhere.

coopy-init installs the program (``-s FD``) right before exec, after no_new_privs, so
nothing runs in the box without it.  Checks the filter makes before any rule: the
architecture (only x86-64 numbers are in the table; any other ABI is refused, which also
closes the i386 entry points), and the x32 bit (``nr & 0x40000000``).
"""

from __future__ import annotations

import errno
import os
import struct
from typing import NamedTuple

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16

# x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
NR = {
    "ioctl": 16, "socket": 41, "clone": 56, "syslog": 103, "uselib": 134,
    "personality": 135, "ustat": 136, "sysfs": 139, "vhangup": 153, "modify_ldt": 154,
    "pivot_root": 155, "adjtimex": 159, "acct": 163, "settimeofday": 164, "mount": 165,
    "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172,
    "ioperm": 173, "create_module": 174, "init_module": 175, "delete_module": 176,
    "get_kernel_syms": 177, "query_module": 178, "quotactl": 179, "nfsservctl": 180,
    "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "fanotify_init": 300, "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308,
    "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "clone3": 435, "mount_setattr": 442, "quotactl_fd": 443,
}


class Rule(NamedTuple):
    """Deny ``syscall`` with ``error``; with ``arg``, only when the argument matches.

    ``test`` is ``"any"`` (always), ``"bits"`` (argument & value != 0), ``"in"`` (its low
    32 bits equal one of ``values``) or ``"not_in"``.  Only the low 32 bits of an argument
    are compared: an ioctl request is an int (CVE-2019-10063 came from comparing 64).
    """

    syscall: str
    error: int
    arg: int = 0
    test: str = "any"
    values: tuple[int, ...] = ()
    userns: bool = False  # lifted by [security] nested_userns = true


EP, NS = errno.EPERM, errno.ENOSYS
RULES = (
    # nested user namespaces: the gateway to most kernel LPEs (nf_tables, CVE-2022-0185…)
    Rule("clone", EP, 0, "bits", (CLONE_NEWUSER,), userns=True),
    Rule("unshare", EP, 0, "bits", (CLONE_NEWUSER,), userns=True),
    Rule("clone3", NS, userns=True),  # flags are in memory: unfilterable; glibc falls back
    Rule("setns", EP, userns=True),
    # mounts: box root owns its mount namespace; coopy's read-only mounts must stay
    Rule("mount", EP, userns=True),
    Rule("umount2", EP, userns=True),
    Rule("pivot_root", EP, userns=True),
    Rule("move_mount", NS, userns=True),
    Rule("open_tree", NS, userns=True),
    Rule("mount_setattr", NS, userns=True),
    Rule("fsopen", NS, userns=True),
    Rule("fsconfig", NS, userns=True),
    Rule("fsmount", NS, userns=True),
    Rule("fspick", NS, userns=True),
    # terminal injection (CVE-2017-5226, CVE-2023-28100)
    Rule("ioctl", EP, 1, "in", (TIOCSTI, TIOCLINUX)),
    # kernel attack surface with no use in an agent's box
    Rule("io_uring_setup", NS), Rule("io_uring_enter", NS), Rule("io_uring_register", NS),
    Rule("bpf", EP), Rule("perf_event_open", EP), Rule("userfaultfd", EP),
    Rule("keyctl", NS), Rule("add_key", NS), Rule("request_key", NS),  # not namespaced
    Rule("init_module", EP), Rule("finit_module", EP), Rule("delete_module", EP),
    Rule("create_module", EP), Rule("get_kernel_syms", EP), Rule("query_module", EP),
    Rule("kexec_load", EP), Rule("kexec_file_load", EP), Rule("reboot", EP),
    Rule("swapon", EP), Rule("swapoff", EP), Rule("acct", EP),
    Rule("quotactl", EP), Rule("quotactl_fd", EP), Rule("syslog", EP),
    Rule("ioperm", EP), Rule("iopl", EP), Rule("settimeofday", EP),
    Rule("clock_settime", EP), Rule("clock_adjtime", EP), Rule("adjtimex", EP),
    Rule("vhangup", EP), Rule("lookup_dcookie", EP), Rule("nfsservctl", EP),
    Rule("uselib", EP), Rule("ustat", EP), Rule("sysfs", EP),
    Rule("open_by_handle_at", EP), Rule("fanotify_init", EP), Rule("modify_ldt", EP),
    # socket families: AF_VSOCK (host interop), AF_PACKET, AF_ALG, legacy ones
    Rule("socket", errno.EAFNOSUPPORT, 0, "not_in", (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)),
    # personality: only the values moby/podman allow (READ_IMPLIES_EXEC etc. are refused)
    Rule("personality", EP, 0, "not_in", (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),
)

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARGS = 0, 4, 16


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def _block(rule: Rule) -> list[tuple[int, int, int, int]]:
    """The instructions run when the syscall number matched (they all return)."""
    deny = _ins(_RET_K, _RET_ERRNO | rule.error)
    allow = _ins(_RET_K, _RET_ALLOW)
    if rule.test == "any":
        return [deny]
    # args[i] is a u64; the low half comes first on little-endian x86-64
    load = _ins(_LD_W_ABS, _OFF_ARGS + 8 * rule.arg)
    if rule.test == "bits":
        (mask,) = rule.values
        return [load, _ins(_JSET_K, mask, 0, 1), deny, allow]
    n = len(rule.values)
    if rule.test == "in":  # equal to one of them: jump to deny
        jumps = [_ins(_JEQ_K, v, n - i, 0) for i, v in enumerate(rule.values)]
        return [load, *jumps, allow, deny]
    if rule.test == "not_in":  # equal to one of them: jump to allow
        jumps = [_ins(_JEQ_K, v, n - i, 0) for i, v in enumerate(rule.values)]
        return [load, *jumps, deny, allow]
    raise ValueError(f"unknown test {rule.test!r}")


def build_filter(*, nested_userns: bool = False) -> bytes:
    """The BPF program (struct sock_filter[]) for x86-64, as bytes for coopy-init."""
    prog = [
        _ins(_LD_W_ABS, _OFF_ARCH),
        _ins(_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        _ins(_RET_K, _RET_ERRNO | errno.ENOSYS),  # another ABI (i386, x32 via arch)
        _ins(_LD_W_ABS, _OFF_NR),
        _ins(_JSET_K, X32_SYSCALL_BIT, 0, 1),
        _ins(_RET_K, _RET_ERRNO | errno.ENOSYS),
    ]
    for rule in RULES:
        if nested_userns and rule.userns:
            continue
        block = _block(rule)
        prog.append(_ins(_JEQ_K, NR[rule.syscall], 0, len(block)))
        prog += block
    prog.append(_ins(_RET_K, _RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def supported() -> bool:
    """Whether this machine's syscall numbers are in the table (x86-64 only for now)."""
    return os.uname().machine == "x86_64"
