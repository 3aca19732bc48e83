"""A raw client of a box's keeper, for the back-pressure tests (run as the box's user).

    keeper_client.py SOCKET stuck             attach, type "go", then read nothing until a
                                               line arrives on stdin; then read to EOF
    keeper_client.py SOCKET read DELAY [go]   attach (and type "go"), read until the end
                                               marker, sleeping DELAY seconds after each
                                               read of at most 64 KiB

It prints one line when attached ("attached"), and at the end one JSON line: what it
received (the numbers `seq` printed: first, last, whether they were contiguous), whether
the end marker came, whether the keeper closed the connection, and the seconds it took.
"""

from __future__ import annotations

import json
import socket
import sys
import time

from coopy import proto

END = b"seq-42"
TIMEOUT = 60.0


def summary(data: bytes, eof: bool, t0: float) -> str:
    lines = data.replace(b"\r", b"").split(b"\n")[:-1]  # the last one may be cut short
    numbers = [int(line) for line in lines if line.isdigit()]
    contiguous = numbers == list(range(1, len(numbers) + 1))
    return json.dumps({"count": len(numbers), "last": numbers[-1] if numbers else 0,
                       "contiguous": contiguous, "end": END in data, "eof": eof,
                       "seconds": time.monotonic() - t0})


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    delay = float(sys.argv[3]) if mode == "read" else 0.0
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(proto.hello("attach", rows=24, cols=80))
    t0 = time.monotonic()
    if mode == "stuck" or sys.argv[4:] == ["go"]:
        sock.sendall(proto.encode(proto.T.DATA, b"go\n"))
    print("attached", flush=True)
    if mode == "stuck":
        sys.stdin.readline()
    sock.settimeout(TIMEOUT)
    decoder, data, eof = proto.Decoder(), bytearray(), False
    while END not in data[-64:] or mode == "stuck":
        chunk = sock.recv(65536)
        if not chunk:
            eof = True
            break
        for frame in decoder.feed(chunk):
            if frame.type == proto.T.DATA:
                data += frame.payload
        if delay:
            time.sleep(delay)
    print(summary(bytes(data), eof, t0), flush=True)


if __name__ == "__main__":
    main()
