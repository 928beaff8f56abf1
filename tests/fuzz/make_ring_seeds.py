#!/usr/bin/env python3
"""Writes the ring fuzzer's seeds into ring_corpus/: a geometry, then steps (see
tests/fuzz/ring_fuzzer.cc for their encoding)."""
import os
import struct

CTL = 384
SQE = 64


def geometry(sq_exp, cq_shift, buffer_pages, max_op_bytes):
    return struct.pack("<BBBH", sq_exp, cq_shift, buffer_pages, max_op_bytes - 1)


def scribble(offset, value):
    return struct.pack("<BIQ", 0, offset, value)


def sqe(index, kind, handle=0, offset=0, length=0, buffer_offset=0, user_data=0, arg=0,
        flags=0, poll_events=0, deadline_ms=0):
    at = CTL + index * SQE
    words = [
        struct.unpack("<Q", struct.pack("<BBHI", kind, flags, poll_events, handle))[0],
        struct.unpack("<Q", struct.pack("<q", offset))[0],
        struct.unpack("<Q", struct.pack("<II", length, deadline_ms))[0],
        buffer_offset, user_data, arg,
    ]
    return b"".join(scribble(at + 8 * i, w) for i, w in enumerate(words))


def sq_tail(v):
    return struct.pack("<BI", 1, v & 0xffffffff)


def cq_head(v):
    return struct.pack("<BI", 2, v & 0xffffffff)


PASS = bytes([3])
FLUSH = bytes([5])


def end(n):
    return bytes([4, n])


seeds = {
    "nop": geometry(3, 1, 1, 4096) + sqe(0, 1, user_data=7) + sq_tail(1) + PASS + end(1) + FLUSH,
    "read_write_every_kind": geometry(3, 1, 2, 4096)
    + sqe(0, 2, handle=3, length=100, buffer_offset=4096, user_data=1)
    + sqe(1, 3, handle=3, offset=-1, length=4096, user_data=2)
    + sqe(2, 4, handle=3, flags=1, user_data=3)
    + sqe(3, 5, handle=3, poll_events=3, user_data=4)
    + sqe(4, 6, arg=1000, deadline_ms=5, user_data=5)
    + sqe(5, 7, arg=1, user_data=6)
    + sq_tail(6) + PASS + end(5) + FLUSH,
    "bad_buffer_and_fields": geometry(2, 0, 1, 65536)
    + sqe(0, 2, handle=3, length=16, buffer_offset=(1 << 64) - 8)
    + sqe(1, 1, handle=9) + sqe(2, 99) + sqe(3, 2, handle=3, offset=-5, length=1)
    + sq_tail(4) + PASS + FLUSH,
    "broken_tail": geometry(3, 1, 0, 1) + sq_tail(100) + PASS + PASS,
    "overflow_then_reap": geometry(2, 0, 0, 1)
    + b"".join(sqe(i, 1, user_data=i) for i in range(4))
    + sq_tail(4) + PASS + end(4) + FLUSH + sq_tail(8) + PASS + end(4) + FLUSH
    + sq_tail(12) + PASS + cq_head(4) + FLUSH + PASS + end(4) + cq_head(8) + FLUSH,
    "wrapping_indices": geometry(3, 1, 1, 4096) + sq_tail(0xfffffffe) + cq_head(0x80000000)
    + PASS + FLUSH,
}

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ring_corpus")
for name, data in seeds.items():
    with open(os.path.join(here, name), "wb") as f:
        f.write(data)
