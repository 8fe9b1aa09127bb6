"""A stdio MCP server that writes down every message it reads: ``python -m tests.e2e.servers.stdio_recorder``.

Standard library only. Each line read from stdin is appended, as it was read, to the file named by
``$STDIO_RECORDER_FILE`` (one JSON message a line) before anything else is done with it, so a test sees
exactly what the proxy wrote to its child: the requests under their renamed ids, and the
``notifications/cancelled`` the proxy sends when a client gives up (the point of this server). What it
writes back to the proxy is appended too, wrapped as ``{"sent": message}``.

Tools: ``echo`` {text} -> the text; ``sleep`` (and any tool whose name starts with ``sleep``, so a
config can give two of them different rules) {seconds} -> "slept" after `seconds`, unless a
``notifications/cancelled`` names the request first (then it is never answered, as the spec asks).
The sleep runs on a timer thread, so stdin is read (and recorded) all the while. EOF on stdin: exit 0.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

RECORD_ENV = "STDIO_RECORDER_FILE"
SUPPORTED = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")

_write = threading.Lock()
_record = threading.Lock()
_timers: dict[Any, threading.Timer] = {}


def send(message: dict[str, Any]) -> None:
    with _write:
        record(json.dumps({"sent": message}))
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def text(value: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": value}], "isError": False}


def record(line: str) -> None:
    path = os.environ.get(RECORD_ENV)
    if path:
        with _record, open(path, "a", encoding="utf-8") as out:
            out.write(line.rstrip("\n") + "\n")


def finish_sleep(request_id: Any) -> None:
    if _timers.pop(json.dumps(request_id), None) is not None:
        send({"jsonrpc": "2.0", "id": request_id, "result": text("slept")})


def handle(message: dict[str, Any]) -> None:
    method, request_id, params = message.get("method"), message.get("id"), message.get("params") or {}
    if method == "notifications/cancelled":
        timer = _timers.pop(json.dumps(params.get("requestId")), None)
        if timer is not None:
            timer.cancel()
        return
    if request_id is None or not isinstance(method, str):
        return
    if method == "initialize":
        asked = params.get("protocolVersion")
        result: dict[str, Any] = {
            "protocolVersion": asked if asked in SUPPORTED else SUPPORTED[-1],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "stdio-recorder", "version": "1.0"},
        }
        send({"jsonrpc": "2.0", "id": request_id, "result": result})
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": request_id, "result": {}})
    elif method == "tools/list":
        names = ("echo", "sleep", "sleep_retried", "sleep_long")
        tools = [{"name": name, "inputSchema": {"type": "object"}} for name in names]
        send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}})
    elif method == "tools/call" and params.get("name") == "echo":
        send({"jsonrpc": "2.0", "id": request_id, "result": text(str((params.get("arguments") or {}).get("text")))})
    elif method == "tools/call" and str(params.get("name")).startswith("sleep"):
        seconds = float((params.get("arguments") or {}).get("seconds", 0))
        timer = threading.Timer(seconds, finish_sleep, args=(request_id,))
        timer.daemon = True
        _timers[json.dumps(request_id)] = timer
        timer.start()
    else:
        send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": f"unknown: {method}"}})


def main() -> None:
    for line in sys.stdin:
        record(line)
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            handle(message)


if __name__ == "__main__":
    main()
