"""The relay's own WebSocket frame reader (relay/wsframes.py), checked against the RFC 6455
examples (section 5.7) and against wsproto, an independent implementation: frames wsproto
masks as a client come out of our reader as server frames wsproto reads back unchanged,
however the byte stream is cut."""

from __future__ import annotations

import os

import pytest
from didmesh.relay.wsframes import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    ClientFrameReader,
    close_frame,
    header,
    mask_in_place,
    mask_py,
    server_frame,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

# RFC 6455, 5.7: "A single-frame masked text message" (here re-typed as binary, 0x82) and
# "Unmasked Ping request and masked Ping response" with the same key 37 fa 21 3d.
RFC_MASKED_HELLO = bytes.fromhex("8285" "37fa213d" "7f9f4d5158")
RFC_MASKED_PONG = bytes.fromhex("8a85" "37fa213d" "7f9f4d5158")
RFC_MASKED_TEXT = bytes.fromhex("8185" "37fa213d" "7f9f4d5158")


def client_frames(payloads: list[bytes], fragment: int = 0) -> bytes:
    """Masked client frames from wsproto (``fragment`` > 0 splits each message)."""
    fp = FrameProtocol(client=True, extensions=[])
    out = b""
    for p in payloads:
        if fragment and len(p) > fragment:
            parts = [p[i:i + fragment] for i in range(0, len(p), fragment)]
            for i, part in enumerate(parts):
                out += fp.send_data(part, fin=i == len(parts) - 1)
        else:
            out += fp.send_data(p, fin=True)
    return out


def read_server_frames(data: bytes) -> list[bytes]:
    """Messages in our output, as wsproto (a client reading a server) sees them."""
    fp = FrameProtocol(client=True, extensions=[])
    fp.receive_bytes(data)
    messages, current = [], b""
    for frame in fp.received_frames():
        assert frame.opcode in (Opcode.BINARY, Opcode.CONTINUATION)
        current += frame.payload
        if frame.message_finished:
            messages.append(current)
            current = b""
    assert current == b""
    return messages


def test_rfc_examples() -> None:
    frames, n, controls = ClientFrameReader(1 << 20).feed(RFC_MASKED_HELLO)
    assert [bytes(f) for f in frames] == [b"\x82\x05Hello"] and n == 5 and controls == []
    frames, n, controls = ClientFrameReader(1 << 20).feed(RFC_MASKED_PONG)
    assert frames == [] and [(c.opcode, c.payload) for c in controls] == [(OP_PONG, b"Hello")]
    # unmasked server frames: RFC 5.7 "Unmasked Ping request", 256 bytes and 64 KiB headers
    assert server_frame(OP_PING, b"Hello") == bytes.fromhex("890548656c6c6f")
    assert header(0x82, 256) == bytes.fromhex("827e0100")
    assert header(0x82, 65536) == bytes.fromhex("827f0000000000010000")


def test_close_frame_shape() -> None:
    frame = close_frame(4000, "peer closed the link")
    fp = FrameProtocol(client=True, extensions=[])
    fp.receive_bytes(frame)
    (got,) = list(fp.received_frames())
    assert got.opcode is Opcode.CLOSE and got.payload[0] == 4000


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_mask_helpers_agree(data: bytes, key: bytes) -> None:
    a, b = bytearray(data), bytearray(data)
    mask_in_place(key, a)
    mask_py(key, b)
    assert a == b
    mask_py(key, b)
    assert b == data


sizes = st.one_of(st.integers(0, 200), st.integers(120, 130), st.integers(65530, 65540),
                  st.integers(0, 70000))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(sizes, min_size=1, max_size=8),
    st.lists(st.integers(1, 90000), max_size=12),
    st.sampled_from([0, 1000, 50000]),
)
def test_any_cut_of_the_stream_forwards_the_same_messages(
    lengths: list[int], cuts: list[int], fragment: int
) -> None:
    payloads = [os.urandom(n) for n in lengths]
    stream = client_frames(payloads, fragment)
    reader = ClientFrameReader(1 << 20)
    out, total = b"", 0
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in zip(points, points[1:], strict=False):
        frames, n, controls = reader.feed(stream[a:b])
        out += b"".join(frames)
        total += n
        assert controls == []
    assert reader.error is None
    assert read_server_frames(out) == payloads
    assert total == sum(lengths)


def test_controls_between_fragments() -> None:
    fp = FrameProtocol(client=True, extensions=[])
    stream = fp.send_data(b"abc", fin=False) + fp.ping(b"p1") + fp.send_data(b"def", fin=True)
    frames, n, controls = ClientFrameReader(100).feed(stream)
    assert read_server_frames(b"".join(frames)) == [b"abcdef"] and n == 6
    assert [(c.opcode, c.payload) for c in controls] == [(OP_PING, b"p1")]


def test_close_code_is_read() -> None:
    fp = FrameProtocol(client=True, extensions=[])

    stream = fp.close(CloseReason.NORMAL_CLOSURE, "bye")
    _, _, (c,) = ClientFrameReader(100).feed(stream)
    assert c.opcode == OP_CLOSE and c.close_code() == 1000
    _, _, (c,) = ClientFrameReader(100).feed(bytes.fromhex("8880" "00000000"))
    assert c.close_code() is None


def masked(b0: int, payload: bytes, length_field: bytes | None = None) -> bytes:
    key = b"\x01\x02\x03\x04"
    body = bytearray(payload)
    mask_py(key, body)
    n = len(payload)
    lf = length_field if length_field is not None else (
        bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    )
    return bytes((b0,)) + lf + key + bytes(body)


BAD = [
    ("unmasked", b"\x82\x03abc", 1002, "masked"),
    ("rsv bit", masked(0xC2, b"abc"), 1002, "reserved"),
    ("text after linked", RFC_MASKED_TEXT, 4400, "text"),
    ("long ping", masked(0x89, b"x" * 126), 1002, "125"),
    ("fragmented ping", masked(0x09, b"x"), 1002, "final"),
    ("unknown control", masked(0x8B, b""), 1002, "control opcode"),
    ("unknown data", masked(0x83, b""), 1002, "data opcode"),
    ("continuation first", masked(0x80, b"abc"), 1002, "without a message"),
    ("binary inside fragments", masked(0x02, b"ab") + masked(0x82, b"cd"), 1002, "inside"),
    ("one-byte close", masked(0x88, b"\x03"), 1002, "1-byte"),
    ("top length bit", bytes((0x82, 0xFF)) + (1 << 63).to_bytes(8, "big"), 1002, "top bit"),
]


@pytest.mark.parametrize(("name", "data", "code", "words"), BAD, ids=[b[0] for b in BAD])
def test_violations_are_named(name: str, data: bytes, code: int, words: str) -> None:
    reader = ClientFrameReader(1000)
    frames, _, _ = reader.feed(masked(0x82, b"before") + data + masked(0x82, b"after"))
    assert bytes(frames[0]) == b"\x82\x06before"  # what came first still goes
    assert b"after" not in b"".join(frames)
    assert reader.error is not None and reader.error.code == code
    assert words in reader.error.reason
    assert reader.feed(masked(0x82, b"later")) == ([], 0, [])


def test_too_big_is_refused_on_the_header_alone() -> None:
    reader = ClientFrameReader(1000)
    head = bytes((0x82, 0x80 | 126)) + (1001).to_bytes(2, "big")  # no key, no payload yet
    assert reader.feed(head) == ([], 0, [])
    assert reader.error is not None and reader.error.code == 1009
    ok = ClientFrameReader(1000)
    ok.feed(bytes((0x82, 0x80 | 126)) + (1000).to_bytes(2, "big"))
    assert ok.error is None


def test_fragments_count_toward_the_message_limit() -> None:
    reader = ClientFrameReader(100)
    frames, _, _ = reader.feed(client_frames([os.urandom(60)]))
    assert reader.error is None
    fp = FrameProtocol(client=True, extensions=[])
    reader.feed(fp.send_data(os.urandom(60), fin=False))
    assert reader.error is None
    reader.feed(fp.send_data(os.urandom(41), fin=True))
    assert reader.error is not None and reader.error.code == 1009


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 13, 4099])
def test_every_header_and_payload_split(chunk: int) -> None:
    """Cuts inside every header field (length, key) and payload, for all header sizes."""
    lengths = [0, 1, 5, 125, 126, 127, 300] + ([65535, 65536, 70000] if chunk > 2 else [])
    payloads = [os.urandom(n) for n in lengths]
    stream = client_frames(payloads) + FrameProtocol(client=True, extensions=[]).ping(b"pp")
    reader = ClientFrameReader(1 << 20)
    out, total, controls = b"", 0, []
    shared = bytearray(max(chunk, 1))  # as the relay feeds it: a view of one reused buffer
    for i in range(0, len(stream), chunk):
        piece = stream[i:i + chunk]
        shared[:len(piece)] = piece
        frames, n, c = reader.feed(memoryview(shared)[:len(piece)])
        shared[:len(piece)] = bytes(len(piece))  # nothing may still point into it
        out += b"".join(frames)
        total += n
        controls += c
    assert reader.error is None
    assert read_server_frames(out) == payloads and total == sum(lengths)
    assert [(c.opcode, c.payload) for c in controls] == [(OP_PING, b"pp")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.integers(1, 300))
def test_arbitrary_bytes_never_crash_the_reader(chunks: list[bytes], limit: int) -> None:
    """Untrusted input: any bytes end in frames, controls or one named error, never an
    exception, and never more payload out than came in."""
    reader = ClientFrameReader(limit)
    fed = forwarded = 0
    for chunk in chunks:
        frames, n, controls = reader.feed(chunk)
        fed += len(chunk)
        forwarded += n
        assert n == sum(len(read_server_frames_raw(f)) for f in frames)
        assert all(len(c.payload) <= 125 for c in controls)
    assert forwarded <= fed
    if reader.error is not None:
        assert reader.error.code in (1002, 1009, 4400) and reader.error.reason


def read_server_frames_raw(frame: bytearray) -> bytes:
    """The payload of one of our (unmasked) server frames."""
    n = frame[1] & 0x7F
    h = 2 if n < 126 else 4 if n == 126 else 10
    return bytes(frame[h:])
