"""Contracts with the library internals the proxy reads: when an upgrade breaks one, this module names it.

pyproject.toml pins aiohttp, aiolimiter and pybreaker to the releases these tests passed on; widening a
pin means running this module (and the suite) on the new release first. Each test states one assumption
in the library's own terms, apart from the proxy's code, so a failure points at the library, not at us.

aiolimiter (`proxy/policies/ratelimit.py`, `_delay`): the public API answers "is there capacity now?"
but not "how long until there is?", which `retryAfter` and the `max_wait` decision need.

- `_level` (the bucket's fill: +1 per `acquire`, drained by `has_capacity()` at `_rate_per_sec` per
  second of loop time), `_rate_per_sec` (= `max_rate / time_period`): `test_aiolimiter_level_and_rate`.
- `_waiters` (the queued acquirers: tuples ending with the future each waits on; one whose caller was
  cancelled is done, and took nothing): `test_aiolimiter_waiters`.
- `acquire()` with capacity free returns without suspending (the stage takes a free token without
  yielding to other calls in between): `test_aiolimiter_level_and_rate`.

pybreaker (`proxy/policies/breaker.py`): pybreaker is the state machine, but its `call()` has no
asyncio path, so the adapter drives the transitions and counts failures by hand.

- `_state_storage.increment_counter()` / `reset_counter()` (the failure count `fail_counter` reads;
  counting never opens the breaker, the adapter decides): `test_pybreaker_counts_without_deciding`.
- `CircuitBreakerListener.state_change(cb, old, new)`: called synchronously, once per `open()`,
  `half_open()`, `close()`, with state objects named by `STATE_*`; `close()` zeroes the count; no
  state changes by time alone: `test_pybreaker_transitions_are_heard`.
- (`proxy/policies/half_open.py` reads nothing of pybreaker's.)

aiohttp (`proxy/server/listener.py`): the listener's limits (header timeout, head size, send timeout,
connection cap, idle reclaim) have no public hooks in aiohttp's server.

- `web.Server.__call__` is the per-connection protocol factory; the listener overrides it, building
  its `RequestHandler` subclass from `_kwargs` and `_loop` with `keepalive_timeout`, `max_headers`,
  `max_field_size`, `max_line_size`: `test_aiohttp_server_builds_each_connection`.
- `RequestHandler._manager = None` before `connection_made` makes `connection_lost` a no-op (a
  connection refused at the cap): `test_aiohttp_connection_lost_without_a_manager`.
- `_request_count` counts heads as `data_received` parses them; `_waiter` is pending while the
  connection waits for a request, done once a head arrived; `_handle_request(request, start_time,
  request_handler)` wraps each request and returns (response, reset): `test_aiohttp_heads_and_requests`.
- `request.protocol` is the connection's handler, the same object for every request on it
  (`proxy/server/handler.py`: upstream connection affinity): `test_aiohttp_heads_and_requests`.
- `handle_error(request, status, exc, message)` hears a head refused for its size (`LineTooLong`, or
  `BadHttpMessage("Too many headers received")`) or an HTTP/1.1 head without Host
  (`BadHttpMessage("Missing 'Host' header in request.")`) with nothing written yet
  (`request.writer.output_size == 0`), with the C and the Python parser: `test_aiohttp_refused_heads`.
- `force_close()` sets `_force_close` and drops `transport` at once, before the buffer is flushed
  (so the listener keeps its own reference): `test_aiohttp_force_close_drops_the_transport`.
- `pause_writing()` / `resume_writing()`: while paused, writes wait in `request.writer.drain()` (so a
  client that reads nothing stops the proxy's writes): `test_aiohttp_writes_wait_while_paused`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp.web_protocol
import pybreaker
import pytest
from aiohttp import http_parser, web
from aiohttp.web_protocol import RequestHandler
from aiolimiter import AsyncLimiter

# --- aiolimiter --------------------------------------------------------------------------------------


class _ManualClock(asyncio.SelectorEventLoop):
    """An event loop whose time moves only when the test says: aiolimiter drains by `loop.time()`."""

    now = 1000.0

    def time(self) -> float:
        return self.now


def _on_manual_clock(scenario: Callable[[_ManualClock], Coroutine[Any, Any, None]]) -> None:
    loop = _ManualClock()
    try:
        loop.run_until_complete(scenario(loop))
    finally:
        loop.close()


def _free(step: Coroutine[Any, Any, None]) -> None:
    """Run `step` to its end in one go: it must not suspend."""
    with pytest.raises(StopIteration):
        step.send(None)


def test_aiolimiter_level_and_rate() -> None:
    async def scenario(loop: _ManualClock) -> None:
        limiter = AsyncLimiter(4, 2.0)  # 4 at once, drained at 2 per second
        assert limiter.max_rate == 4
        assert limiter._rate_per_sec == 2.0
        assert limiter._level == 0  # starts empty: the whole burst is free
        for _ in range(4):
            _free(limiter.acquire())
        assert limiter._level == 4
        assert not limiter.has_capacity()
        loop.now += 0.5
        assert limiter.has_capacity()  # it drains as it looks
        assert limiter._level == 3.0

    _on_manual_clock(scenario)


def test_aiolimiter_waiters() -> None:
    async def scenario(loop: _ManualClock) -> None:
        limiter = AsyncLimiter(1, 1.0)
        _free(limiter.acquire())
        queued = loop.create_task(limiter.acquire())
        await _until(lambda: bool(limiter._waiters))
        assert all(isinstance(entry, tuple) and isinstance(entry[-1], asyncio.Future) for entry in limiter._waiters)
        assert len([waiter for *_, waiter in limiter._waiters if not waiter.done()]) == 1
        queued.cancel()
        await asyncio.wait({queued})
        assert queued.cancelled()
        assert [waiter for *_, waiter in limiter._waiters if not waiter.done()] == []
        assert limiter._level == 1  # the caller that left took nothing

    _on_manual_clock(scenario)


# --- pybreaker ---------------------------------------------------------------------------------------


class _Heard(pybreaker.CircuitBreakerListener):
    def __init__(self) -> None:
        self.changes: list[tuple[str | None, str]] = []

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self.changes.append((None if old_state is None else old_state.name, new_state.name))


def _breaker(heard: _Heard) -> pybreaker.CircuitBreaker:
    # The arguments proxy/policies/breaker.py passes; reset_timeout=0 so that only a call() could move it.
    return pybreaker.CircuitBreaker(fail_max=2, reset_timeout=0, success_threshold=1, listeners=[heard], name="up")


def test_pybreaker_counts_without_deciding() -> None:
    heard = _Heard()
    cb = _breaker(heard)
    assert (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN) == ("closed", "open", "half-open")
    assert cb.current_state == "closed"
    storage = cb._state_storage
    for _ in range(5):
        storage.increment_counter()
    assert cb.fail_counter == 5
    assert cb.current_state == "closed" and heard.changes == []  # over fail_max, and still closed
    storage.reset_counter()
    assert cb.fail_counter == 0


def test_pybreaker_transitions_are_heard() -> None:
    heard = _Heard()
    cb = _breaker(heard)
    cb._state_storage.increment_counter()
    cb.open()
    assert heard.changes == [("closed", "open")]  # heard before open() returned
    assert cb.current_state == "open"  # reset_timeout passed long ago: time alone changes nothing
    cb.half_open()
    assert heard.changes[-1] == ("open", "half-open") and cb.current_state == "half-open"
    cb.close()
    assert heard.changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    assert cb.current_state == "closed"
    assert cb.fail_counter == 0


# --- aiohttp -----------------------------------------------------------------------------------------


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds; a bounded number of turns, no time passes."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class _Connection(RequestHandler):
    """Records what it sees at the points the listener overrides."""

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.heard: list[tuple[Any, ...]] = []

    def data_received(self, data: bytes) -> None:
        waiting = self._waiter is not None and not self._waiter.done()
        before = self._request_count
        super().data_received(data)
        still = self._waiter is not None and not self._waiter.done()
        self.heard.append(("data", waiting, before, self._request_count, still))

    async def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        response, reset = await super()._handle_request(request, start_time, request_handler)
        self.heard.append(("handled", isinstance(response, web.StreamResponse), reset))
        return response, reset

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        self.heard.append(("error", status, type(exc), getattr(exc, "message", None), request.writer.output_size))
        return super().handle_error(request, status, exc, message)


class _Server(web.Server):
    """Builds its connections as `proxy.server.listener.JsonRpcServer` does."""

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.built: list[_Connection] = []

    def __call__(self) -> RequestHandler:
        connection = _Connection(self, loop=self._loop, **self._kwargs)
        self.built.append(connection)
        return connection


LIMITS = {"keepalive_timeout": 30.0, "max_headers": 8, "max_field_size": 8190, "max_line_size": 8190}
PARSERS = {"python": http_parser.HttpRequestParserPy, "c": getattr(http_parser, "HttpRequestParserC", None)}


class _Served:
    def __init__(self, server: _Server, port: int) -> None:
        self.server = server
        self.port = port
        self.protocols: list[Any] = []  # request.protocol of each request, in order
        self.drain_waited: list[bool] = []

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture(params=sorted(PARSERS))
async def served(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[_Served]:
    parser = PARSERS[request.param]
    if parser is None:
        pytest.skip("aiohttp's C parser is not built here")
    monkeypatch.setattr(aiohttp.web_protocol, "HttpRequestParser", parser)
    box: list[_Served] = []

    async def handle(req: web.BaseRequest) -> web.StreamResponse:
        served = box[0]
        served.protocols.append(req.protocol)
        if req.path == "/drain":
            protocol = req.protocol
            protocol.pause_writing()
            drain = asyncio.ensure_future(req.writer.drain())
            for _ in range(20):
                await asyncio.sleep(0)
            served.drain_waited.append(not drain.done())
            protocol.resume_writing()
            await drain
        return web.Response(text="ok")

    server = _Server(handle, **LIMITS)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box.append(_Served(server, int(runner.addresses[0][1])))
    try:
        yield box[0]
    finally:
        await runner.cleanup()


async def _answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


GET = b"GET /%s HTTP/1.1\r\nHost: test\r\n\r\n"


async def test_aiohttp_server_builds_each_connection(served: _Served) -> None:
    server = served.server
    assert server._kwargs == LIMITS and server._loop is asyncio.get_running_loop()
    parameters = inspect.signature(RequestHandler.__init__).parameters
    assert {"loop", *LIMITS} <= set(parameters) and parameters["loop"].kind is inspect.Parameter.KEYWORD_ONLY
    reader, writer = await served.connect()
    writer.write(GET % b"a")
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    assert len(server.built) == 1  # __call__ built the connection's protocol
    writer.close()


async def test_aiohttp_connection_lost_without_a_manager() -> None:
    connection = RequestHandler(web.Server(lambda _: web.Response()), loop=asyncio.get_running_loop())
    connection._manager = None
    connection.connection_lost(None)  # nothing was set up: nothing is undone, nothing raises


async def test_aiohttp_heads_and_requests(served: _Served) -> None:
    parameters = list(inspect.signature(RequestHandler._handle_request).parameters)
    assert parameters == ["self", "request", "start_time", "request_handler"]
    reader, writer = await served.connect()
    first = GET % b"a"
    writer.write(first[:10])  # part of a head
    await _until(lambda: len(served.server.built) == 1 and len(served.server.built[0].heard) == 1)
    connection = served.server.built[0]
    writer.write(first[10:])  # the rest of it
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    writer.write(GET % b"b")  # a second request on the same connection
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    writer.close()
    data = [event for event in connection.heard if event[0] == "data"]
    # (waiting for a request when the bytes came, count before, count after, still waiting after)
    assert data[0] == ("data", True, 0, 0, True)  # part of a head: nothing counted, still waiting
    assert data[1] == ("data", True, 0, 1, False)  # the head completed in data_received: counted, no longer waiting
    assert data[2][2:] == (1, 2, False)
    assert [event for event in connection.heard if event[0] == "handled"] == [("handled", True, False)] * 2
    assert served.protocols == [connection, connection]  # request.protocol: the connection, for each request


@pytest.mark.parametrize(
    ("head", "kind", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: test\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", "LineTooLong", None),
        (b"GET / HTTP/1.1\r\nHost: test\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(12)) + b"\r\n",
         "BadHttpMessage", "Too many headers received"),
        (b"GET / HTTP/1.1\r\n\r\n", "BadHttpMessage", "Missing 'Host' header in request."),
    ],
    ids=["line-too-long", "too-many-headers", "missing-host"],
)  # fmt: skip
async def test_aiohttp_refused_heads(served: _Served, head: bytes, kind: str, message: str | None) -> None:
    reader, writer = await served.connect()
    writer.write(head)
    assert (await _answer(reader)).split(b" ", 2)[1] == b"400"  # aiohttp answers these as HTTP/1.0
    writer.close()
    [error] = [event for event in served.server.built[0].heard if event[0] == "error"]
    _, status, exc_type, exc_message, output_size = error
    assert (status, exc_type.__name__, output_size) == (400, kind, 0)
    assert issubclass(exc_type, aiohttp.http_exceptions.BadHttpMessage)
    if message is not None:
        assert exc_message == message
    assert served.protocols == []  # the application never saw it


async def test_aiohttp_force_close_drops_the_transport(served: _Served) -> None:
    reader, writer = await served.connect()
    writer.write(GET % b"a")
    await _answer(reader)
    connection = served.server.built[0]
    assert connection._force_close is False and connection.transport is not None
    connection.force_close()
    assert connection._force_close is True
    assert connection.transport is None  # dropped at once, whatever was still unsent
    assert await reader.read() == b""
    writer.close()


async def test_aiohttp_writes_wait_while_paused(served: _Served) -> None:
    reader, writer = await served.connect()
    writer.write(GET % b"drain")
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200")
    writer.close()
    assert served.drain_waited == [True]
