"""``analyze --apply ID --shadow [DURATION]``: hand a proposal to the running proxy as a shadow trial.

Instead of writing the file, the CLI posts the proposal, the full text of the file as the proposal would
edit it, and the SHA-256 of the file it edited to the proxy's ``POST /trials`` (the admin URL given with
``--follow``). The proxy counts the candidate next to the live policy for the trial's duration and writes
the file itself only if the trial promotes it (`proxy.trials.shadow`). So ``--config`` must be the very
file the proxy was started with: a copy, or a file changed since, is refused (409).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.analyzer import EditError, Proposal, edit_text
from proxy.analyzer.report import one_line

__all__ = ["shadow_usage_error", "start_trial"]

REQUEST_TIMEOUT_S = 30.0


def shadow_usage_error(args: Any) -> str | None:
    """What is wrong with ``--shadow`` on this command line, or None."""
    if getattr(args, "shadow", None) is None:
        return None
    if not args.apply:
        return "--shadow goes with --apply ID: it tries that proposal in the proxy before applying it"
    if not args.follow:
        return "--shadow needs --follow ADMIN_URL: the proxy at that admin URL runs the trial (and writes the file if it passes)"
    return None


async def start_trial(
    admin: str, config_path: Path, proposal: Proposal, duration: float | None, out: Callable[[str], None], err: Callable[[str], None]
) -> int:
    """Post `proposal` as a trial to the proxy at `admin`; 0 when it started, 1 with the proxy's error otherwise."""
    try:
        raw = config_path.read_bytes()
        candidate = edit_text(raw.decode("utf-8"), proposal.changes)
    except (OSError, UnicodeDecodeError, EditError) as exc:
        err(f"analyze: cannot prepare the trial of {proposal.id} from {config_path}: {exc}")
        return 1
    body = {
        "proposal": proposal.to_dict(),
        "candidate": candidate,
        "base_hash": hashlib.sha256(raw).hexdigest(),
        "duration": duration or None,
    }
    admin = admin.rstrip("/")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as session:
            async with session.post(f"{admin}/trials", data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as response:
                status, text = response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        err(f"analyze: cannot reach the proxy at {admin}: {exc}")
        return 1
    try:
        answer = orjson.loads(text)
    except orjson.JSONDecodeError:
        answer = {}
    if status != 201 or not isinstance(answer, dict) or not isinstance(answer.get("trial"), dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        err(f"analyze: the proxy refused the trial of {proposal.id} (HTTP {status}): {one_line(str(error or text))}")
        return 1
    trial = answer["trial"]
    out(f"trial {trial['id']} of proposal {proposal.id} started for {trial['duration_s']:g}s: {one_line(proposal.title)}")
    err(
        f"analyze: the proxy counts the change without enforcing it and writes {config_path} only if the trial promotes it; "
        f"watch it with: curl {admin}/trials  (abort: curl -X DELETE {admin}/trials/{trial['id']})"
    )
    return 0
