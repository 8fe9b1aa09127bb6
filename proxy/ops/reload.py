"""Hot reload: notice a new config file, validate it fully, then swap one reference.

Kubernetes mounts a ConfigMap as a directory whose files are symlinks through ``..data``, and an
update swaps that symlink atomically: a watch on the file itself dies at the first update and
`MODIFY` never fires. So the reloader never trusts file events: every trigger (a change anywhere in
the file's directory, seen by watchfiles; a poll every `reload.interval`; SIGHUP; ``POST /reload``)
re-reads the path, follows the symlinks, and compares a content hash with the last one seen.

A new hash is parsed and validated like a file at start-up. An invalid file keeps the old config
serving; the errors are logged with their YAML paths, counted, kept for /status, and reported as a
``config_rejected`` event; they are redacted once, here (`proxy.redact.redact_text`), since a
validation error quotes the value it refused (an upstream URL with a ``?token=`` or ``user:pass@``). A valid one is applied by `apply` (which builds the new runtime and swaps it
in: calls in flight finish on the policies they started with).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from proxy.config.model import ConfigError, ProxyConfig, load_config, read_config_bytes
from proxy.policies.base import NULL_OBSERVER, Observer
from proxy.redact import redact_text
from proxy.tasks import Owner, cancel_and_wait, spawn

__all__ = ["ConfigReloader", "ReloadResult"]

log = structlog.get_logger("proxy.ops.reload")

WATCH_DEBOUNCE_MS: Final = 200


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one reload attempt did: ``applied``, ``unchanged`` or ``rejected`` (with `errors`)."""

    outcome: str
    trigger: str
    config_hash: str
    at: float = field(default_factory=time.time)
    errors: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "trigger": self.trigger,
            "file_hash": self.config_hash,
            "at": round(self.at, 3),
            "errors": list(self.errors),
        }


def _digest(data: bytes | ConfigError) -> str:
    """What the file held, or why it could not be read: a change in either is a change to act on."""
    raw = data if isinstance(data, bytes) else "\n".join(data.errors).encode()
    return hashlib.sha256(raw).hexdigest()[:12]


class ConfigReloader:
    """Watches one config file and applies each new valid version through `apply`."""

    def __init__(
        self,
        path: Path,
        apply: Callable[[ProxyConfig], Awaitable[None]],
        interval: float,
        watch: bool,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self.path = path
        self._apply = apply
        self._interval = interval
        self._watch = watch
        self._observer = observer
        self._lock = asyncio.Lock()
        self._seen = _digest(self._read())
        self._tasks: Owner = set()
        self.last: ReloadResult | None = None
        self.applied = 0
        self.rejected = 0

    def _read(self) -> bytes | ConfigError:
        try:
            return read_config_bytes(self.path)  # follows the ..data symlinks to whatever they point at now
        except ConfigError as exc:
            return exc

    async def check(self, trigger: str, force: bool = False) -> ReloadResult:
        """Re-read the file; apply it if its content changed (or `force`); never raise."""
        async with self._lock:
            data = self._read()
            digest = _digest(data)
            if digest == self._seen and not force:
                return ReloadResult("unchanged", trigger, digest)
            self._seen = digest
            try:
                if isinstance(data, ConfigError):
                    raise data
                config = load_config(data.decode("utf-8", errors="replace"))
                await self._apply(config)
            except Exception as exc:  # whatever fails, the old config keeps serving and reloads go on
                raw = exc.errors if isinstance(exc, ConfigError) else [f"could not apply the new config: {exc!r}"]
                errors = [redact_text(line) for line in raw]  # for the log, /status and the event alike
                self.rejected += 1
                result = ReloadResult("rejected", trigger, digest, errors=tuple(errors))
                log.error("config_rejected", path=str(self.path), trigger=trigger, errors=errors)
                self._observer.policy_event("config_rejected", None, trigger=trigger, errors=list(errors))
            else:
                self.applied += 1
                result = ReloadResult("applied", trigger, digest)
                log.info("config_reloaded", path=str(self.path), trigger=trigger, file_hash=digest)
                self._observer.policy_event("config_reloaded", None, trigger=trigger, file_hash=digest)
            self.last = result
            return result

    def start(self) -> None:
        """Start polling (and watching, when enabled and watchfiles is installed)."""
        spawn(self._poll(), name=f"config-poll:{self.path}", owner=self._tasks)
        if self._watch:
            spawn(self._watch_directory(), name=f"config-watch:{self.path.parent}", owner=self._tasks)

    async def stop(self) -> None:
        """Stop polling and watching; returns once both tasks have ended (a crash was logged by `spawn`)."""
        await cancel_and_wait(self._tasks)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check("poll")

    async def _watch_directory(self) -> None:
        try:
            from watchfiles import awatch
        except ImportError:  # pragma: no cover - polling alone still reloads
            log.info("config_watch_unavailable", reason="watchfiles is not installed; polling only")
            return
        try:
            async for _ in awatch(self.path.parent, debounce=WATCH_DEBOUNCE_MS, recursive=False):
                await self.check("watch")
        except Exception as exc:  # a failing watcher must not stop the proxy: polling goes on
            log.warning("config_watch_failed", error=str(exc))
