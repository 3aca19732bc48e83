"""Box networking.  This release: `none` (own namespace, loopback up) and `host`.

``lo`` comes up with one ioctl (~0.2 ms); pyroute2 costs ~90 ms to import and is kept for
the modes that need veth (a later release).  coop forgot this step: its "none" boxes had
no working 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import socket
import struct

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def bring_up_loopback() -> None:
    """Set IFF_UP on ``lo`` in the calling process's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
