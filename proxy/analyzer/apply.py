"""Write a proposal into the config file: re-derived, validated, backed up, replaced atomically.

The file may have changed since the proposal was made, so the edit is derived again from what is on
disk now, and its diff must remove and add exactly the lines the proposal's diff does, hunk by hunk:
a change elsewhere in the file (even in the context lines around the edit) is fine, since the edit is
re-derived from the YAML structure; a change to the lines the proposal touches is refused. The result must validate like any reload before anything is written. The
old content goes to ``FILE.bak-<timestamp>``; the new one is written to a temporary file in the same
directory and moved over the original with `os.replace`, so a watcher (or a crash) sees either the
old file or the new one, never half of it. The hot reload then picks it up like any other edit.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from proxy.analyzer.proposal import Proposal
from proxy.analyzer.yamledit import EditError, edit_text, unified_diff
from proxy.config.model import ConfigError, load_config

__all__ = ["ApplyError", "apply_proposal"]


class ApplyError(Exception):
    """The proposal cannot be applied to the file as it is now; nothing was written."""


def _hunks(diff: str) -> list[list[str]]:
    """The removed and added lines of each hunk (no line numbers, file headers or context)."""
    hunks: list[list[str]] = []
    for line in diff.splitlines():
        if line.startswith(("--- ", "+++ ")) and not hunks:
            continue
        if line.startswith("@@"):
            hunks.append([])
        elif hunks and line[:1] in "+-":
            hunks[-1].append(line)
    return hunks


def _backup_path(path: Path, now: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    candidate, n = path.with_name(f"{path.name}.bak-{stamp}"), 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.bak-{stamp}-{n}"), n + 1
    return candidate


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a temporary file in the same directory and `os.replace`, with `mode`."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def apply_proposal(path: str | Path, proposal: Proposal, *, env: dict[str, str] | None = None, now: float | None = None) -> Path:
    """Apply `proposal` to the file at `path`; return the backup's path. Raises `ApplyError`."""
    if proposal.advisory or not proposal.changes:
        raise ApplyError(f"proposal {proposal.id} is advice only: it has no change to apply")
    target = Path(path).resolve()  # through a symlink: replace the file, keep the link
    try:
        raw = target.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApplyError(f"cannot read {path}: {exc}") from exc
    try:
        edited = edit_text(text, proposal.changes)
    except EditError as exc:
        raise ApplyError(f"proposal {proposal.id} no longer applies to {path}: {exc}") from exc
    if edited == text:
        raise ApplyError(f"{path} already has the change of proposal {proposal.id}")
    if proposal.diff is not None and _hunks(unified_diff(text, edited)) != _hunks(proposal.diff):
        raise ApplyError(
            f"{path} changed where proposal {proposal.id} edits it since the proposal was made; "
            f"run the analyzer again to get a proposal for the file as it is now"
        )
    try:
        load_config(edited, env)
    except ConfigError as exc:
        raise ApplyError(f"proposal {proposal.id} would make {path} invalid: " + "; ".join(exc.errors)) from exc
    backup = _backup_path(target, time.time() if now is None else now)
    mode = target.stat().st_mode & 0o7777
    write_atomically(backup, raw, mode)
    write_atomically(target, edited.encode("utf-8"), mode)
    return backup
