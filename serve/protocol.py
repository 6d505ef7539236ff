"""Time limits on reading a request: uvicorn's HTTP protocol with a header and a body deadline.

uvicorn 0.54 times out only an idle keep-alive connection (after a response); a client that
connects and sends nothing, or sends its headers or body a byte at a time, holds its
connection (and a task waiting on the body) for as long as it likes, so a few thousand slow
clients exhaust the server. With `timed_protocol(header_timeout, body_timeout)` as uvicorn's
`http` protocol:

- a connection must send a request's complete headers within `header_timeout` seconds of
  opening (or of the request's first byte, for the next request on a kept-alive connection);
- a request's complete body must arrive within `body_timeout` seconds of its headers.

A late request gets `408 Request Timeout` (with `connection: close`) when nothing was
answered on it yet, and its connection is closed; a connection that never sent a byte is just
closed. The application sees a request whose body timed out as a client disconnect.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_IDLE, _HEADERS, _BODY = "idle", "headers", "body"


def _timeout_response(message: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = message.encode()
    lines = [b"HTTP/1.1 408 Request Timeout\r\n"]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n",
        b"\r\n",
        body,
    ]
    return b"".join(lines)


class TimedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with the deadlines of the module doc (set by `timed_protocol`)."""

    header_timeout: float = 10.0
    body_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting = _IDLE

    def _arm(self, waiting: str, seconds: float) -> None:
        self._disarm()
        self._waiting = waiting
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(_IDLE, self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(_HEADERS, self.header_timeout)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._arm(_BODY, self.body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _expired(self) -> None:
        self._deadline = None
        transport, cycle = self.transport, self.cycle
        if transport is None or transport.is_closing():
            return
        if self._waiting == _IDLE:
            transport.close()  # nothing asked: nothing to answer
            return
        if self._waiting == _HEADERS:
            if cycle is not None and not cycle.response_complete:
                transport.close()  # an earlier request on it is still being answered
                return
            limit, what = self.header_timeout, "headers"
        else:
            if cycle is None or cycle.response_started:
                transport.close()  # answered already (a route that ignores its body)
                return
            # the application waits for the body: it now reads a disconnect, and whatever it
            # would still send is dropped
            cycle.disconnected = True
            cycle.message_event.set()
            limit, what = self.body_timeout, "body"
        message = f"request {what} not received within {limit:g} s"
        transport.write(_timeout_response(message, self.server_state.default_headers))
        transport.close()


def timed_protocol(header_timeout: float, body_timeout: float) -> type[TimedHttpProtocol]:
    """A TimedHttpProtocol class with these deadlines (uvicorn takes a class: `http=`)."""
    return type(
        "TimedHttpProtocol",
        (TimedHttpProtocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )
