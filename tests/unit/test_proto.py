"""The keeper protocol's encoder and decoder (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coopy import proto
from coopy.proto import T


@pytest.mark.parametrize(
    ("frame", "kind", "payload"),
    [
        (proto.encode(T.DATA, b"hi"), T.DATA, b"hi"),
        (proto.encode(T.DETACH), T.DETACH, b""),
        (proto.resize(40, 120), T.RESIZE, b"\x00\x28\x00\x78"),
        (proto.encode_int(T.EXIT, -1), T.EXIT, b"\xff\xff\xff\xff"),
    ],
)
def test_round_trip(frame: bytes, kind: T, payload: bytes) -> None:
    (got,) = proto.Decoder().feed(frame)
    assert got == (kind, payload)


def test_hello_carries_the_version() -> None:
    (got,) = proto.Decoder().feed(proto.hello("attach", rows=24, cols=80))
    assert got.json() == {"version": proto.VERSION, "verb": "attach", "rows": 24, "cols": 80}


def test_resize_and_ints_unpack() -> None:
    assert proto.unpack_resize(proto.resize(3, 4)[5:]) == (3, 4)
    (f,) = proto.Decoder().feed(proto.encode_int(T.KILL, 15))
    assert proto.unpack_int(f) == 15


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 64))
def test_any_split_of_the_stream_gives_the_same_frames(chunks: list[bytes], step: int) -> None:
    stream = b"".join(proto.encode(T.DATA, c) for c in chunks)
    dec = proto.Decoder()
    got = []
    for i in range(0, len(stream), step):
        got += dec.feed(stream[i : i + step])
    assert [f.payload for f in got] == chunks


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x63\x00\x00\x00\x00", "unknown frame type 99"),
        (b"\x02\x7f\xff\xff\xff", "too large"),
    ],
)
def test_refuses_garbage(raw: bytes, message: str) -> None:
    with pytest.raises(proto.ProtocolError, match=message):
        proto.Decoder().feed(raw)


def test_refuses_oversized_payload_on_encode() -> None:
    with pytest.raises(proto.ProtocolError):
        proto.encode(T.DATA, b"x" * (proto.MAX_PAYLOAD + 1))


@pytest.mark.parametrize("payload", [b"", b"\x00\x01\x02"])
def test_bad_fixed_sizes(payload: bytes) -> None:
    with pytest.raises(proto.ProtocolError):
        proto.unpack_resize(payload)
    with pytest.raises(proto.ProtocolError):
        proto.unpack_int(proto.Frame(T.EXIT, payload))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@given(json_values)
def test_json_without_the_json_module_matches_it(value: object) -> None:
    import json

    assert proto.dumps(value) == json.dumps(value)
    assert proto.loads(json.dumps(value)) == json.loads(json.dumps(value))
    assert proto.loads(f" \n{json.dumps(value, indent=1)}\n") == value


@pytest.mark.parametrize("text", ["", "  ", "{", "[1] x", '{"a":}', "nul"])
def test_bad_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        proto.loads(text)


frames_st = st.lists(st.tuples(st.sampled_from([T.DATA, T.DATA, T.ERROR, T.EXIT]),
                               st.binary(max_size=300)), max_size=12)


@given(frames_st, st.integers(1, 64))
def test_stream_gives_data_as_it_arrives_and_other_frames_whole(
        frames: list[tuple[int, bytes]], step: int) -> None:
    stream = b"".join(proto.encode(k, p) for k, p in frames)
    dec = proto.Decoder()
    got: list[tuple[int, bytes]] = []  # consecutive DATA pieces joined
    for i in range(0, len(stream), step):
        for item in dec.stream(stream[i : i + step]):
            if isinstance(item, memoryview):
                if got and got[-1][0] == T.DATA:
                    got[-1] = (T.DATA, got[-1][1] + bytes(item))
                else:
                    got.append((T.DATA, bytes(item)))
            else:
                got.append((item.type, item.payload))
    want: list[tuple[int, bytes]] = []
    for k, p in frames:
        if k == T.DATA and not p:
            continue  # an empty DATA frame gives no piece
        if k == T.DATA and want and want[-1][0] == T.DATA:
            want[-1] = (T.DATA, want[-1][1] + p)
        else:
            want.append((k, p))
    assert got == want


def test_stream_refuses_garbage() -> None:
    with pytest.raises(proto.ProtocolError, match="unknown frame type 99"):
        proto.Decoder().stream(b"\x63\x00\x00\x00\x00")
