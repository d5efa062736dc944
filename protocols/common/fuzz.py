"""Malformed-frame fuzzing for a server speaking the wire format (used by the tests and benchmarks).

Cases are valid frames mutated (byte flips biased to the header, cuts),
and plain random bytes; half of them are sent inside a keyed session (a valid
RESUME first) so the mutations reach the ciphertext loader, not only the
header checks.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np

from protocols.common.wire import Frame, MessageType, encode


def fuzz_cases(count: int, *, session: str, ciphertext: bytes, seed: int = 1) -> Iterator[bytes]:
    """``count`` byte strings to send on fresh connections, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    resume = encode(Frame(MessageType.RESUME, {"session": session}))
    seeds = [encode(Frame(t, m, b)) for t, m, b in (
        (MessageType.HELLO, {"protocol": 1}, ()),
        (MessageType.KEYS, {"format": "seal", "names": ["public_key"]}, (b"\x5e\xa1" * 40,)),
        (MessageType.RESUME, {"session": session}, ()),
        (MessageType.QUERY, {"id": 3}, (ciphertext,)),
        (MessageType.QUERY, {"id": 4}, (ciphertext[:200],)),
    )]
    for _ in range(count):
        raw = bytearray(seeds[rng.integers(len(seeds))])
        for _ in range(rng.integers(1, 6)):
            at = rng.integers(len(raw)) if rng.random() < 0.5 else rng.integers(min(len(raw), 64))
            raw[at] = rng.integers(256)
        if rng.random() < 0.3:
            raw = raw[: rng.integers(len(raw) + 1)]
        if rng.random() < 0.15:
            raw = bytearray(rng.bytes(int(rng.integers(1, 64))))
        yield (resume if rng.random() < 0.5 else b"") + bytes(raw)


def send_and_wait_for_close(address: tuple[str, int], data: bytes, *, timeout: float = 5.0) -> bool:
    """Send ``data``, half-close, read until the server closes. Returns False if it hung past ``timeout``."""
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return True  # the server already answered a fatal error and hung up
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass  # reset with our bytes unread: also a close
    return True
