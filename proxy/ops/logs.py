"""structlog set-up: JSON lines on stderr, and a last processor that keeps secrets out of every line.

Every line passes through `proxy.redact.redact` (the one redaction function every writer uses) as
the last processor before rendering, so it holds for any logger call anywhere, including lines that
quote foreign text: a value under a credential-like key is replaced, and string values are scanned
for quoted credentials (an ``Authorization:`` line inside aiohttp's error message for a malformed
request, a ``?token=`` or ``user:pass@`` inside a URL). The same pass bounds the line: each string is
clipped to `MAX_LOG_VALUE_CHARS` (tracebacks to `MAX_LOG_EXCEPTION_CHARS`), nesting to
`MAX_LOG_DEPTH`, and the line's strings and values to `MAX_LOG_LINE_CHARS` and `MAX_LOG_ITEMS`, so
a 1 MiB tool name or message never makes a 1 MiB line. Code should never log a secret in the first
place; this is the net under it.

A line below the configured level costs a method call that returns None: loggers are built once, on
first use (``cache_logger_on_first_use``), and their level methods read the level in force (`ProxyLogger`),
so a reload that changes ``logging.level`` or ``logging.format`` still reaches every logger: the level
through `ProxyLogger`, the renderer through structlog's one processor list, changed in place (as its
``capture_logs`` does). Lines go to the ``sys.stderr`` of the last call.

structlog is imported here without rich: `structlog.dev` imports rich (and with it pygments and attrs,
about 2 MiB resident) whenever it is installed, only to draw console tracebacks. This module is the
first to import structlog in ``serve`` (`proxy.cli.main` imports it before anything that logs), so
serving loads none of it; console tracebacks are then plain ones. A process that imported structlog
before keeps it as it is.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final


def _import_structlog() -> None:
    """Import structlog with rich hidden from it, unless it is imported already (see the module docstring)."""
    if "structlog" in sys.modules:
        return
    hidden = "rich" not in sys.modules
    if hidden:
        sys.modules["rich"] = None  # type: ignore[assignment]  # meanwhile `import rich` raises ImportError
    try:
        importlib.import_module("structlog")
    finally:
        if hidden and sys.modules.get("rich", ...) is None:
            del sys.modules["rich"]  # anything else may import rich as usual


_import_structlog()
import structlog  # noqa: E402  (imported just above: this only binds the name)

from proxy.redact import (
    MAX_LOG_DEPTH,
    MAX_LOG_ITEMS,
    MAX_LOG_LINE_CHARS,
    MAX_LOG_VALUE_CHARS,
    REDACTED,
    SECRET_KEY,
    Budget,
    redact,
)

__all__ = [
    "MAX_LOG_DEPTH",
    "MAX_LOG_EXCEPTION_CHARS",
    "MAX_LOG_ITEMS",
    "MAX_LOG_LINE_CHARS",
    "MAX_LOG_VALUE_CHARS",
    "REDACTED",
    "SECRET_KEY",
    "ProxyLogger",
    "configure_logging",
    "admits",
    "redact",
    "redact_secrets",
]

MAX_LOG_EXCEPTION_CHARS: Final = 32768
"""A traceback (the ``exception`` field) is clipped to this many characters: the proxy's own frames, kept whole."""

_FIRST: Final = ("event", "level", "timestamp", "logger")
_LEVELS: Final = logging.getLevelNamesMapping()
_level = logging.INFO
"""The level in force (set by `configure_logging`): `ProxyLogger` reads it at every call."""


def admits(configured: str, level: str) -> bool:
    """Does a ``logging.level`` of `configured` let lines of `level` through (``admits("warning", "info")``: no)?"""
    return _LEVELS[level.upper()] >= _LEVELS[configured.upper()]


class ProxyLogger(structlog.BoundLoggerBase):
    """structlog's bound logger with the level read at each call: a line below it costs a comparison.

    structlog's `make_filtering_bound_logger` fixes the level in a class per level; loggers cached on first
    use would keep the level they were built with, and a reload may change it."""

    def debug(self, event: str | None = None, **kw: Any) -> Any:
        return None if logging.DEBUG < _level else self._proxy_to_logger("debug", event, **kw)

    def info(self, event: str | None = None, **kw: Any) -> Any:
        return None if logging.INFO < _level else self._proxy_to_logger("info", event, **kw)

    def warning(self, event: str | None = None, **kw: Any) -> Any:
        return None if logging.WARNING < _level else self._proxy_to_logger("warning", event, **kw)

    warn = warning

    def error(self, event: str | None = None, **kw: Any) -> Any:
        return None if logging.ERROR < _level else self._proxy_to_logger("error", event, **kw)

    def exception(self, event: str | None = None, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self.error(event, **kw)

    def critical(self, event: str | None = None, **kw: Any) -> Any:
        return None if logging.CRITICAL < _level else self._proxy_to_logger("critical", event, **kw)

    fatal = critical
    msg = info


class _Stderr:
    """The wrapped logger: writes each rendered line, at every level, to the ``sys.stderr`` of the last
    `configure_logging` (as structlog's ``PrintLoggerFactory(file=sys.stderr)`` would)."""

    __slots__ = ("stream",)

    def __init__(self) -> None:
        self.stream: Any = sys.stderr

    def msg(self, message: str) -> None:
        self.stream.write(message + "\n")
        self.stream.flush()

    debug = info = warning = warn = error = err = exception = critical = fatal = log = msg


_STDERR: Final = _Stderr()


def _stderr_logger(*_: Any) -> _Stderr:
    return _STDERR


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every value redacted and bounded (`proxy.redact.redact`), the line as a whole too."""
    budget = Budget()
    exception = event_dict.pop("exception", None)
    first = {key: event_dict[key] for key in _FIRST if key in event_dict}  # never starved by a long field
    bounded: dict[str, Any] = redact({**first, **event_dict}, budget=budget)
    if exception is not None:
        bounded["exception"] = redact(exception, max_chars=MAX_LOG_EXCEPTION_CHARS, budget=Budget(chars=None))
    event_dict.clear()
    event_dict.update(bounded)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog to stderr as JSON lines (or coloured console lines for people), at `level` and above.

    Called again (a reload), it changes the level and format of every logger, cached ones included."""
    global _level
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    processors: list[Any] = structlog.get_config()["processors"]  # changed in place: cached loggers hold it
    processors[:] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
        renderer,
    ]
    _level = _LEVELS[level.upper()]
    _STDERR.stream = sys.stderr
    structlog.configure(
        processors=processors,
        wrapper_class=ProxyLogger,
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
