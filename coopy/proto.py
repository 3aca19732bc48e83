"""The keeper protocol: typed, framed, versioned messages over a unix stream socket.

A frame is a 5-byte header (type: u8, length: u32 big-endian) and ``length`` bytes of
payload.  One pure encoder and one incremental decoder; the decoder refuses unknown
types and payloads over ``MAX_PAYLOAD`` rather than buffering without bound.  The first
frame from a client is HELLO (JSON with ``version``); a keeper of another version
answers ERROR, and the client tells the user to restart that box.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
MAX_PAYLOAD = 1 << 20
_HEADER = struct.Struct("!BI")


class T:
    """Frame types.  Plain ints, not an IntEnum: this module is on the path of every
    client (`coopy shell -c`), and importing enum costs ~5 ms of its start (measured)."""

    HELLO = 1  # client → keeper, JSON: version, verb ("attach", "info", "kill"), rows, cols
    DATA = 2  # both ways: terminal bytes
    RESIZE = 3  # client → keeper: rows, cols (u16, u16)
    DETACH = 4  # client → keeper: leave, the box keeps running
    EXIT = 5  # keeper → client: the agent's status (i32), the box has ended
    ERROR = 6  # keeper → client: UTF-8 message
    INFO = 7  # keeper → client: JSON
    KILL = 8  # client → keeper: a signal (i32) for the box's init
    OK = 9  # keeper → client: the request was done


NAMES = {value: key for key, value in vars(T).items() if key.isupper()}


def name(kind: int) -> str:
    """A frame type's name, for messages."""
    return NAMES.get(kind, str(kind))


class ProtocolError(Exception):
    """A peer sent something that is not this protocol."""


class Frame(tuple[int, bytes]):
    """One decoded frame: (type, payload)."""

    __slots__ = ()

    def __new__(cls, kind: int, payload: bytes) -> Frame:
        return tuple.__new__(cls, (kind, payload))

    @property
    def type(self) -> int:
        """One of T's values."""
        return self[0]

    @property
    def payload(self) -> bytes:
        """The bytes after the header."""
        return self[1]

    def json(self) -> Any:
        """The payload as JSON (HELLO, INFO)."""
        try:
            return loads(self.payload.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"{name(self.type)}: bad JSON payload") from exc


# JSON through CPython's C accelerator, as json.dumps/json.loads use it, without importing
# json: its decoder imports re (~4 ms of a client's start, measured).  Elsewhere: json.

def dumps(value: Any) -> str:
    """``json.dumps(value)`` (ASCII, ", " and ": " separators)."""
    try:
        from _json import encode_basestring_ascii, make_encoder
    except ImportError:  # not CPython
        import json

        return json.dumps(value)

    def default(obj: Any) -> Any:
        raise TypeError(f"{type(obj).__name__} is not JSON serializable")

    encoder = make_encoder(None, default, encode_basestring_ascii, None, ": ", ", ",
                           False, False, True)
    return "".join(encoder(value, 0))


class _Scan:  # what _json's scanner reads from json.JSONDecoder, with its defaults
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity


def loads(text: str) -> Any:
    """``json.loads(text)``: ValueError when it is not one JSON value."""
    try:
        from _json import make_scanner
    except ImportError:  # not CPython
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        # typeshed types the context as the scanner itself; any object with these works
        value, end = make_scanner(_Scan)(text, start)  # type: ignore[arg-type]
    except StopIteration as exc:
        raise ValueError(f"no JSON value at {exc.value}") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError(f"extra data at {end}")
    return value


def encode(kind: int, payload: bytes = b"") -> bytes:
    """One frame, ready to send."""
    return header(kind, len(payload)) + payload


def header(kind: int, length: int) -> bytes:
    """The header of a frame whose ``length`` bytes of payload are sent after it (the
    keeper sends header and payload with one sendmsg, without joining them)."""
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"{name(kind)}: payload of {length} bytes is too large")
    return _HEADER.pack(kind, length)


def encode_json(kind: int, value: Any) -> bytes:
    """A frame whose payload is JSON."""
    return encode(kind, dumps(value).encode())


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


def encode_int(kind: int, value: int) -> bytes:
    """EXIT and KILL carry one signed 32-bit integer."""
    return encode(kind, struct.pack("!i", value))


def unpack_int(frame: Frame) -> int:
    """The integer of an EXIT or KILL frame."""
    if len(frame.payload) != 4:
        raise ProtocolError(f"{name(frame.type)}: expected 4 bytes")
    (value,) = struct.unpack("!i", frame.payload)
    return int(value)


class Decoder:
    """Turns a byte stream into frames; keeps at most one partial frame."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0  # stream(): bytes of the current DATA payload still to come

    def _check(self) -> tuple[int, int]:
        kind, length = _HEADER.unpack_from(self._buf)
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"frame of {length} bytes is too large")
        if kind not in NAMES:
            raise ProtocolError(f"unknown frame type {kind}")
        return kind, length

    def stream(self, data: bytes) -> list[Frame | memoryview]:
        """Like :meth:`feed`, but DATA payloads come out as they arrive, as pieces of
        ``data`` (no copy), not whole: a client writes output without first collecting
        a frame of up to 256 KiB across several reads.  Other frames come out whole, in
        order with the pieces.  Use one of feed or stream per decoder."""
        out: list[Frame | memoryview] = []
        view = memoryview(data)
        buf = self._buf
        while view:
            if self._left:
                n = min(self._left, len(view))
                out.append(view[:n])
                view = view[n:]
                self._left -= n
                continue
            if len(buf) < _HEADER.size:
                take = _HEADER.size - len(buf)
                buf += view[:take]
                view = view[take:]
                if len(buf) < _HEADER.size:
                    break
            kind, length = self._check()
            if kind == T.DATA:
                self._left = length
                del buf[:]
                continue
            take = _HEADER.size + length - len(buf)
            buf += view[:take]
            view = view[take:]
            if len(buf) < _HEADER.size + length:
                break
            out.append(Frame(kind, bytes(buf[_HEADER.size:])))
            del buf[:]
        return out

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
            if kind not in NAMES:
                raise ProtocolError(f"unknown frame type {kind}")
            end = pos + _HEADER.size + length
            if end > size:
                break
            frames.append(Frame(kind, bytes(src[pos + _HEADER.size:end])))
            pos = end
        if src is buf:
            del buf[:pos]
        else:
            buf += memoryview(data)[pos:]
        return frames
