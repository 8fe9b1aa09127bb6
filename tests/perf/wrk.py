"""Drive `wrk` with a POST script and read its results as JSON (printed by the script's ``done()``).

wrk records every latency in whole microseconds in an exact per-microsecond histogram, so its
percentiles have 1 µs resolution: fine enough for a 1-connection p50/p99, no Python loop needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["WRK_HEADERS", "find_wrk", "run_wrk", "write_script"]

WRK_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
}

_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"latency_us":{{"mean":%.2f,"stdev":%.2f,"min":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.min,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max))
end
"""


def find_wrk() -> str | None:
    return shutil.which("wrk")


_VARYING = """
local counter = 0
local head, tail = [==[{head}]==], [==[{tail}]==]
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, head .. counter .. tail)
end
"""


def write_script(path: Path, body: bytes, headers: dict[str, str], vary: bytes | None = None) -> Path:
    """A wrk script POSTing `body` with `headers`. With `vary`, a JSON string in `body` (e.g. ``b'"hello"'``),
    each request has that string with a counter appended instead (``"hello-1"``, ``"hello-2"``, ...)."""
    lines = "\n".join(
        f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()
    )
    script = _SCRIPT.format(body=body.decode(), headers=lines)
    if vary is not None:
        head, _, tail = body.partition(vary)
        if not _:
            raise ValueError(f"{vary!r} is not in the body")
        script += _VARYING.format(head=(head + vary[:-1] + b"-").decode(), tail=(vary[-1:] + tail).decode())
    path.write_text(script)
    return path


def run_wrk(
    wrk: str,
    url: str,
    script: Path,
    *,
    connections: int,
    duration: float,
    threads: int = 1,
    pin: Sequence[str] = (),
) -> dict[str, Any]:
    """One wrk run; returns the parsed ``done()`` JSON plus ``rps``. Raises if wrk fails."""
    argv = [
        *pin,
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=duration + 30
    )
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["error_count"] = sum(result["errors"].values())
            return result
    raise RuntimeError(
        f"wrk gave no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
