"""Where events go besides the in-memory bus: a structlog line, a rotated JSON-lines file, and /events.

The log line and the file are synchronous bus listeners: a file write lands in the process's buffer
and reaches the file every `FLUSH_EVERY` events, or `FLUSH_AFTER` after the first event still held
(a quiet proxy's single event shows in the file at once for `tail -f` or anything following it), or on
close; the hot path never waits for a disk, and under load the file is still written in batches. `/events`
serves the stream as Server-Sent Events with each event's `id`, so a consumer that reconnects with
`Last-Event-ID` (or `?since=N`) resumes where it stopped, as far back as the bus's buffer reaches.

Every event leaves through `outgoing` (`proxy.redact.redact`, the redaction every writer uses): on
stderr, in the file and on /events alike, credential-like keys and credentials quoted inside strings
are replaced, and the event is bounded like a log line (`MAX_LOG_VALUE_CHARS` per string, and so on),
whatever the code that made it put in.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson
from aiohttp import web

from proxy.events.bus import EventBus
from proxy.redact import redact

__all__ = ["JsonlFile", "events_endpoint", "log_event", "outgoing"]

FLUSH_EVERY: Final = 64
"""Events held in the file's buffer at most: the 64th is written with the 63 before it."""
FLUSH_AFTER: Final = 0.05
"""Seconds an event may wait in the buffer when no more come (the writer is idle), at most."""


def outgoing(event: dict[str, Any]) -> dict[str, Any]:
    """`event` as it may leave the proxy: redacted and bounded."""
    redacted: dict[str, Any] = redact(event)
    return redacted


def log_event(event: dict[str, Any]) -> None:
    """Bus listener: one JSON line per event on stderr, in the shape of the proxy's structlog lines.

    Written directly, not through structlog's processor chain (which measured about 10x the cost
    of the event itself); `outgoing` does the redaction that chain's last processor would.
    """
    event = outgoing(event)
    line = {"event": event["type"], "level": "info", "logger": "proxy.events.recorder"}
    line.update((k, v) for k, v in event.items() if k != "type")  # `event` names the type, as in every log line
    line["timestamp"] = datetime.fromtimestamp(event["ts"], UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    data = orjson.dumps(line) + b"\n"
    stream = getattr(sys.stderr, "buffer", None)
    if stream is None:  # a text-only stderr (some test runners)
        sys.stderr.write(data.decode())
        sys.stderr.flush()
    else:
        stream.write(data)
        stream.flush()


class JsonlFile:
    """Bus listener: append each event as one JSON line; rotate to FILE.1 … FILE.N past `max_bytes`.

    Events are buffered and written in batches: every `FLUSH_EVERY` events, and by a timer armed with the
    first event held (`FLUSH_AFTER`), so the last events before a quiet spell never wait for more. A
    timer handle rather than a task: the flush is one synchronous call, and `close` cancels it. Without a
    running event loop (a command writing events itself) every event is written at once.
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self._max_bytes = max_bytes
        self._backups = backups
        self._pending = 0
        self._timer: asyncio.TimerHandle | None = None
        self._file: IO[bytes] = self._open()

    def _open(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.open("ab")

    def __call__(self, event: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(outgoing(event)) + b"\n")
        self._pending += 1
        if self._pending >= FLUSH_EVERY:
            self.flush()
        elif self._timer is None:
            self._flush_soon()
        if self._file.tell() >= self._max_bytes:
            self._rotate()

    def _flush_soon(self) -> None:
        """Arm the idle flush; with no loop to run it, flush now."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._timer = loop.call_later(FLUSH_AFTER, self._flush_due)

    def _flush_due(self) -> None:
        self._timer = None
        if not self._file.closed:
            self.flush()

    def flush(self) -> None:
        """Write what the buffer holds to the file now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._file.flush()
        self._pending = 0

    def _rotate(self) -> None:
        self.flush()
        self._file.close()
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self._backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = self._open()

    def close(self) -> None:
        self.flush()
        self._file.close()


def _cursor(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("since")
    if raw is None:
        return None
    try:
        return max(0, int(raw))
    except ValueError:
        raise web.HTTPBadRequest(text="since / Last-Event-ID must be an event id (an integer)") from None


def events_endpoint(bus: EventBus) -> Any:
    """The admin handler for GET /events: SSE (default) or, with ``?format=json``, a JSON array of the buffer."""

    async def handler(request: web.Request) -> web.StreamResponse:
        since = _cursor(request)
        if request.query.get("format") == "json":
            return web.Response(body=orjson.dumps([outgoing(e) for e in bus.recent(since or 0)]), content_type="application/json")
        subscription = bus.subscribe(since)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        reported = 0
        try:
            await response.write(b": mcp-resilience-proxy events v1\n\n")
            while True:
                event = await subscription.get()
                if subscription.dropped > reported:
                    lost = subscription.dropped - reported
                    reported = subscription.dropped
                    await response.write(b"event: dropped\ndata: " + orjson.dumps({"count": lost}) + b"\n\n")
                event = outgoing(event)
                data = orjson.dumps(event)
                await response.write(b"id: %d\nevent: %s\ndata: %s\n\n" % (event["id"], event["type"].encode(), data))
        except (ConnectionResetError, OSError):
            pass
        finally:
            subscription.close()
        return response

    return handler
