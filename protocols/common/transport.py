"""Moving frames over TCP sockets, with size and time limits.

How bytes move, apart from what a party does with them: the HE server and
client both read and write :class:`~protocols.common.wire.Frame` objects
through :class:`FrameSocket`, which refuses oversize frames before reading
them, times out an idle peer (no frame starts) and a slow one (a frame that
does not finish within ``frame_timeout``), and reports a peer that hangs up
mid-frame as :class:`PeerGone` rather than crashing.
"""

from __future__ import annotations

import socket
import time

from protocols.common.wire import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    Frame,
    decode_header,
    decode_payload,
    encode,
)
from secure_infer._errors import ProtocolError


class PeerGone(ProtocolError):
    """The peer closed the connection (cleanly between frames, or in the middle of one)."""

    def __init__(self, message: str, *, mid_frame: bool) -> None:
        super().__init__(message, code="peer-gone")
        self.mid_frame = mid_frame


class PeerTimeout(ProtocolError):
    """The peer sent nothing for too long, or took too long to finish a frame."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="timeout")


class FrameSocket:
    """A connected TCP socket that sends and receives whole frames."""

    def __init__(self, sock: socket.socket, *, peer: str = "peer", max_frame: int = DEFAULT_MAX_FRAME,
                 idle_timeout: float = 60.0, frame_timeout: float = 120.0) -> None:
        self.sock = sock
        self.peer = peer
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.bytes_in = 0
        self.bytes_out = 0

    def _read_exact(self, size: int, deadline: float | None, *, first: bool) -> bytes:
        """Read ``size`` bytes, allocating as they arrive (a declared size alone costs no memory)."""
        pieces: list[bytes] = []
        got = 0
        while got < size:
            if deadline is not None and deadline - time.monotonic() <= 0:
                raise PeerTimeout(f"{self.peer} did not finish a frame within {self.frame_timeout:.0f} s")
            try:
                if deadline is None:
                    self.sock.settimeout(self.idle_timeout)
                else:
                    self.sock.settimeout(max(0.001, min(deadline - time.monotonic(), self.idle_timeout)))
                data = self.sock.recv(min(size - got, 1 << 20))
            except TimeoutError:
                if deadline is None:
                    raise PeerTimeout(f"{self.peer} was idle for {self.idle_timeout:.0f} s") from None
                continue  # the deadline check above decides
            except OSError as exc:  # reset, or the socket closed under us at shutdown
                raise PeerGone(f"{self.peer}: connection lost ({exc.strerror or exc})", mid_frame=not first or got > 0) from None
            if not data:
                mid = not first or got > 0
                raise PeerGone(f"{self.peer} closed the connection" + (" in the middle of a frame" if mid else ""),
                               mid_frame=mid)
            pieces.append(data)
            got += len(data)
            if deadline is None:  # the frame has started: from now on it must finish in time
                deadline = time.monotonic() + self.frame_timeout
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def receive(self) -> Frame:
        """Read one frame. Raises ProtocolError (and subclasses) on anything but a good frame.

        A frame whose header is bad or too large is not read further: the caller
        should answer with an error and close, since the stream's framing is lost.
        """
        head = self._read_exact(HEADER_SIZE, None, first=True)
        deadline = time.monotonic() + self.frame_timeout
        header = decode_header(head, max_frame=self.max_frame)
        meta = self._read_exact(header.meta_len, deadline, first=False) if header.meta_len else b""
        body = self._read_exact(header.body_len, deadline, first=False) if header.body_len else b""
        self.bytes_in += header.frame_size
        return decode_payload(header, meta, body)

    def send(self, frame: Frame) -> int:
        data = encode(frame)
        self.sock.settimeout(self.frame_timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise PeerTimeout(f"{self.peer} did not accept a {len(data)}-byte frame within {self.frame_timeout:.0f} s") from None
        except OSError as exc:
            raise PeerGone(f"{self.peer} is gone ({exc.strerror or exc})", mid_frame=False) from None
        self.bytes_out += len(data)
        return len(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
