"""structlog set-up: JSON lines on stderr, and a last processor that keeps secrets out of every line.

Redaction is by key name, so it holds for any logger call anywhere: a value under a key that looks
like a credential (authorization, token, secret, password, cookie, api key) is replaced before
rendering. Code should never log such values in the first place; this is the net under it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["REDACTED", "SECRET_KEY", "configure_logging", "redact", "redact_secrets"]

SECRET_KEY = re.compile(r"authorization|token|secret|password|passwd|cookie|api[-_]?key", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    """`value` with every entry under a credential-like key replaced, at any depth (logs, events, fixtures)."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: blank every value whose key names a credential, at any depth."""
    for key in list(event_dict):
        if SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        elif isinstance(event_dict[key], dict | list | tuple):
            event_dict[key] = redact(event_dict[key])
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog to stderr as JSON lines (or coloured console lines for people)."""
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
