"""The keeper protocol: typed, framed, versioned messages over a unix stream socket.

A frame is a 5-byte header (type: u8, length: u32 big-endian) and ``length`` bytes of
payload.  One pure encoder and one incremental decoder; the decoder refuses unknown
types and payloads over ``MAX_PAYLOAD`` rather than buffering without bound.  The first
frame from a client is HELLO (JSON with ``version``); a keeper of another version
answers ERROR, and the client tells the user to restart that box.
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any, NamedTuple

VERSION = 1
MAX_PAYLOAD = 1 << 20
_HEADER = struct.Struct("!BI")


class T(enum.IntEnum):
    """Frame types."""

    HELLO = 1  # client → keeper, JSON: version, verb ("attach", "info", "kill"), rows, cols
    DATA = 2  # both ways: terminal bytes
    RESIZE = 3  # client → keeper: rows, cols (u16, u16)
    DETACH = 4  # client → keeper: leave, the box keeps running
    EXIT = 5  # keeper → client: the agent's status (i32), the box has ended
    ERROR = 6  # keeper → client: UTF-8 message
    INFO = 7  # keeper → client: JSON
    KILL = 8  # client → keeper: a signal (i32) for the box's init
    OK = 9  # keeper → client: the request was done


class ProtocolError(Exception):
    """A peer sent something that is not this protocol."""


class Frame(NamedTuple):
    """One decoded frame."""

    type: T
    payload: bytes

    def json(self) -> Any:
        """The payload as JSON (HELLO, INFO)."""
        try:
            return json.loads(self.payload)
        except ValueError as exc:
            raise ProtocolError(f"{self.type.name}: bad JSON payload") from exc


def encode(kind: T, payload: bytes = b"") -> bytes:
    """One frame, ready to send."""
    return header(kind, len(payload)) + payload


def header(kind: T, length: int) -> bytes:
    """The header of a frame whose ``length`` bytes of payload are sent after it (the
    keeper sends header and payload with one sendmsg, without joining them)."""
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"{kind.name}: payload of {length} bytes is too large")
    return _HEADER.pack(kind, length)


def encode_json(kind: T, value: Any) -> bytes:
    """A frame whose payload is JSON."""
    return encode(kind, json.dumps(value).encode())


def hello(verb: str, **fields: Any) -> bytes:
    """The first frame a client sends: the protocol version, the verb, its fields."""
    return encode_json(T.HELLO, {"version": VERSION, "verb": verb, **fields})


def resize(rows: int, cols: int) -> bytes:
    """A RESIZE frame."""
    return encode(T.RESIZE, struct.pack("!HH", rows, cols))


def unpack_resize(payload: bytes) -> tuple[int, int]:
    """rows, cols of a RESIZE frame."""
    if len(payload) != 4:
        raise ProtocolError("RESIZE: expected 4 bytes")
    rows, cols = struct.unpack("!HH", payload)
    return rows, cols


def encode_int(kind: T, value: int) -> bytes:
    """EXIT and KILL carry one signed 32-bit integer."""
    return encode(kind, struct.pack("!i", value))


def unpack_int(frame: Frame) -> int:
    """The integer of an EXIT or KILL frame."""
    if len(frame.payload) != 4:
        raise ProtocolError(f"{frame.type.name}: expected 4 bytes")
    (value,) = struct.unpack("!i", frame.payload)
    return int(value)


class Decoder:
    """Turns a byte stream into frames; keeps at most one partial frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames they complete."""
        buf = self._buf
        if buf:
            buf += data
        src: bytes | bytearray = buf if buf else data  # whole frames: no copy into buf
        frames = []
        pos, size = 0, len(src)
        while size - pos >= _HEADER.size:
            kind, length = _HEADER.unpack_from(src, pos)
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"frame of {length} bytes is too large")
            try:
                t = T(kind)
            except ValueError:
                raise ProtocolError(f"unknown frame type {kind}") from None
            end = pos + _HEADER.size + length
            if end > size:
                break
            frames.append(Frame(t, bytes(src[pos + _HEADER.size:end])))
            pos = end
        if src is buf:
            del buf[:pos]
        else:
            buf += memoryview(data)[pos:]
        return frames
