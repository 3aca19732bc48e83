"""The capabilities box root keeps: Docker's default set plus CAP_SYS_PTRACE.

Box root holds every capability *in its own user namespace*; coopy-init drops the rest
from the bounding set before the command runs, so neither root nor a setuid program in
the box ever has them.  Without CAP_SYS_ADMIN, box root cannot unmount, remount or
mount anything (the seccomp filter refuses the calls as well).  CAP_SYS_PTRACE only
reaches the box's own processes (its pid and user namespace); without it Yama
(ptrace_scope=1) blocks gdb, py-spy, strace -p and CUDA's fd passing between processes.
"""

from __future__ import annotations

# name -> number (linux/capability.h)
KEEP = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}


def keep_mask() -> int:
    """The bounding set coopy-init keeps, as a bit mask."""
    mask = 0
    for bit in KEEP.values():
        mask |= 1 << bit
    return mask
