"""Carrying legacy sessions over the proxy's own restart (a sidecar updated while its server runs on).

A client's session id is the upstream's until a rebuild (`proxy.sessions.table`), so a proxy restarted
in front of a live server passes those ids through and they go on working, without recovery until the
client initializes again. A session already rebuilt is routable only through the proxy's record.

- With ``sessions_file`` set (on a volume that outlives the container, e.g. an ``emptyDir``), a stopping
  proxy writes every kept session there (`save`) and the next one reads them back (`load`): nothing
  changes for any client, recovery included. The file holds what the clients sent to initialize and
  subscribe (never a header, so no credential), is written atomically with mode 0600, and is read with
  the same bounds as live traffic (`max_sessions`, `MAX_RECORDED_BODY`, `MAX_SUBSCRIPTIONS`, the file's
  size); an unreadable file is logged and ignored (the proxy starts without records: passthrough).
- Without it, the stopping proxy ends upstream the sessions only it could route
  (`UpstreamSessions.end_remapped`): their clients hear a 404 next and initialize again, as the spec
  says, rather than leave the server holding sessions nobody can reach.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from proxy.sessions.keeper import MAX_LEVEL, UpstreamSessions
from proxy.sessions.table import MAX_RECORDED_BODY, MAX_SUBSCRIPTIONS, MAX_URI, LegacySession

__all__ = ["FORMAT", "MAX_FILE_BYTES", "load", "save"]

log = structlog.get_logger("proxy")

FORMAT: Final = 1
"""The file's format version: a file of another version is ignored."""
MAX_FILE_BYTES: Final = 128 * 1024 * 1024
"""The largest sessions file read back (larger: ignored, logged)."""


def save(path: str, keepers: Mapping[str, UpstreamSessions]) -> int:
    """Write every kept session of every upstream to `path` (atomically, mode 0600); returns how many."""
    upstreams = {name: [_record(s) for s in keeper.table.sessions() if s.lost is None] for name, keeper in keepers.items()}
    data = orjson.dumps({"format": FORMAT, "upstreams": upstreams})
    target = Path(path)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return sum(len(records) for records in upstreams.values())


def load(path: str, keepers: Mapping[str, UpstreamSessions]) -> int:
    """Read sessions saved by `save` into the keepers of the same upstream names; returns how many. The
    file is removed once read: records are valid for the one restart they were written for."""
    target = Path(path)
    try:
        if target.is_symlink() or not target.is_file():
            if target.exists() or target.is_symlink():
                log.warning("sessions_file_ignored", path=path, why="not a regular file")
            return 0
        if target.stat().st_size > MAX_FILE_BYTES:
            raw = None
            log.warning("sessions_file_ignored", path=path, why=f"larger than {MAX_FILE_BYTES} bytes")
        else:
            raw = target.read_bytes()
    except OSError as exc:
        log.warning("sessions_file_ignored", path=path, why=str(exc))
        return 0
    finally:
        _remove(target)  # before parsing: a proxy killed while reading it must not meet it again at start
    if raw is None:
        return 0
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        log.warning("sessions_file_ignored", path=path, why=str(exc))
        return 0
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("upstreams"), dict):
        log.warning("sessions_file_ignored", path=path, why="not a sessions file of this version")
        return 0
    loaded = 0
    for name, records in document["upstreams"].items():
        keeper = keepers.get(name)
        if keeper is None or not isinstance(records, list):
            continue
        for record in records[-keeper.config.max_sessions :]:
            session = _session(record)
            if session is not None and keeper.adopt(session):
                loaded += 1
    return loaded


def _remove(target: Path) -> None:
    try:
        target.unlink(missing_ok=True)
    except OSError as exc:  # a read-only volume: logged; the proxy starts all the same
        log.warning("sessions_file_not_removed", path=str(target), why=str(exc))


def _record(session: LegacySession) -> dict[str, Any]:
    return {
        "client_id": session.client_id,
        "upstream_id": session.upstream_id,
        "initialize": _text(session.initialize),
        "protocol": session.protocol,
        "capabilities": session.capabilities,
        "generation": session.generation,
        "log_level": session.log_level,
        "subscribed": list(session.subscriptions),
        "restorable": session.restorable,
        "owner": session.owner,
    }


def _session(record: Any) -> LegacySession | None:
    """A record read back, checked as live traffic is; None when anything is off."""
    if not isinstance(record, dict):
        return None
    try:
        client_id, upstream_id, protocol = record["client_id"], record["upstream_id"], record["protocol"]
        if not all(isinstance(v, str) and 0 < len(v) <= 256 for v in (client_id, upstream_id, protocol)):
            return None
        initialize = _bytes(record["initialize"])
        log_level, uris, owner = record.get("log_level"), record.get("subscribed", []), record.get("owner", "")
        if log_level is not None and not (isinstance(log_level, str) and len(log_level) <= MAX_LEVEL):
            return None
        if not (isinstance(uris, list) and len(uris) <= MAX_SUBSCRIPTIONS and isinstance(owner, str) and len(owner) <= 64):
            return None
        if not all(isinstance(uri, str) and len(uri) <= MAX_URI for uri in uris):
            return None
        generation = record.get("generation", 0)
        if not isinstance(generation, int) or generation < 0:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    session = LegacySession(client_id, upstream_id, initialize, protocol, record.get("capabilities"), 0.0, generation)
    session.log_level = log_level
    session.subscriptions = dict.fromkeys(uris)
    session.restorable = record.get("restorable") is not False
    session.owner = owner
    return session


def _text(body: bytes) -> str:
    return base64.b64encode(body).decode("ascii")


def _bytes(text: Any) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_RECORDED_BODY * 2:
        raise ValueError("not a recorded body")
    body = base64.b64decode(text, validate=True)
    if len(body) > MAX_RECORDED_BODY:
        raise ValueError("recorded body over its bound")
    return body
