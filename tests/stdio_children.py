"""Scripted stdio children for the stdio upstream's tests: ``python -m tests.stdio_children MODE [N]``.

Standard library only (a child starts in tens of milliseconds). Every mode but the broken ones serves
`serve`: a minimal, correct MCP stdio server (``initialize``, ``ping``, ``tools/list``, ``tools/call``
of its tools, one JSON-RPC message per line, EOF on stdin -> exit 0). Its tools:

- ``echo`` {text} -> the text; ``sleep`` {seconds} -> "slept" after sleeping;
- ``burst`` {count} -> `count` ``notifications/message`` numbered 0..count-1, then the answer (order tests);
- ``env`` -> the child's environment as JSON text; ``exit`` {code} -> exits at once, unanswered.

Modes: ``echo``; ``garbage`` (`GARBAGE` non-JSON or non-object lines first, then echo); ``garbage_only``
(garbage, and a garbage line for every line read, never an answer); ``exit_now`` (exit 3); ``no_init``
(reads for ever, answers nothing); ``long_line`` (a 9 MiB line, then reads for ever); ``grandchild``
(starts a sleeping grandchild in its process group, then echo); ``ignore_term`` (echo, ignoring SIGTERM
and EOF: only SIGKILL ends it); ``ignore_eof`` (echo, ignoring EOF: SIGTERM ends it); ``stderr_flood``
(`FLOOD` stderr lines, the first with a credential and the second 100 KiB long, closes stderr, then echo);
``crash_after N`` (answers initialize and N more requests, then exits 1); ``wrong_version`` (answers
initialize with 1999-01-01); ``init_error`` (answers initialize with an error); ``chatty`` (a notification
before its initialize answer, and a ``roots/list`` request right after ``notifications/initialized``, as
npm server-everything does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

GARBAGE = [
    "this is not json",
    "Authorization: Bearer sk-live-garbage-secret",
    "42",
    '"a string"',
    "{truncated",
]
FLOOD = 500
SECRET_LINE = "token=flood-secret-value oops"
LONG_STDERR = 100 * 1024
SUPPORTED = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def answer(request_id: Any, result: dict[str, Any]) -> None:
    send({"jsonrpc": "2.0", "id": request_id, "result": result})


def text(value: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": value}], "isError": False}


def initialize_result(params: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    asked = params.get("protocolVersion")
    return {
        "protocolVersion": version or (asked if asked in SUPPORTED else SUPPORTED[-1]),
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "stdio-children", "version": "1.0"},
    }


def call_tool(request_id: Any, params: dict[str, Any]) -> None:
    name, args = params.get("name"), params.get("arguments") or {}
    if name == "echo":
        answer(request_id, text(str(args.get("text", ""))))
    elif name == "sleep":
        time.sleep(float(args.get("seconds", 0)))
        answer(request_id, text("slept"))
    elif name == "burst":
        for n in range(int(args.get("count", 0))):
            send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": n}})
        answer(request_id, text("burst"))
    elif name == "env":
        answer(request_id, text(json.dumps(dict(os.environ))))
    elif name == "exit":
        os._exit(int(args.get("code", 0)))
    else:
        send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": f"unknown tool {name}"}})


def serve(mode: str = "echo", crash_after: int | None = None) -> None:
    """Answer requests until stdin ends; `crash_after`: exit 1 after that many requests past initialize."""
    served = 0
    for raw in sys.stdin:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(message, dict) or "method" not in message:
            continue
        method, request_id, params = message["method"], message.get("id"), message.get("params") or {}
        if request_id is None:
            if method == "notifications/initialized" and mode == "chatty":
                send({"jsonrpc": "2.0", "id": 0, "method": "roots/list"})
            continue
        if method == "initialize":
            if mode == "init_error":
                send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32603, "message": "no thanks"}})
                continue
            if mode == "chatty":
                send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hi"}})
            answer(request_id, initialize_result(params, "1999-01-01" if mode == "wrong_version" else None))
            continue
        if method == "ping":
            answer(request_id, {})
        elif method == "tools/list":
            answer(
                request_id, {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in ("echo", "sleep")]}
            )
        elif method == "tools/call":
            call_tool(request_id, params)
        else:
            send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "method not found"}})
        served += 1
        if crash_after is not None and served >= crash_after:
            sys.exit(1)


def block_forever() -> None:
    while True:
        signal.pause()


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode in ("echo", "wrong_version", "init_error", "chatty"):
        serve(mode)
    elif mode == "garbage":
        for line in GARBAGE:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        serve()
    elif mode == "garbage_only":
        sys.stdout.write("\n".join(GARBAGE) + "\n")
        sys.stdout.flush()
        for _ in sys.stdin:
            sys.stdout.write("still not json\n")
            sys.stdout.flush()
    elif mode == "exit_now":
        sys.exit(3)
    elif mode == "no_init":
        for _ in sys.stdin:
            pass
        block_forever()
    elif mode == "long_line":
        sys.stdout.write('{"jsonrpc": "2.0", "method": "x", "params": "' + "a" * (9 * 1024 * 1024) + '"}\n')
        sys.stdout.flush()
        for _ in sys.stdin:
            pass
        block_forever()
    elif mode == "grandchild":
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # inherits stdout: holds the pipe
        serve()
    elif mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        serve()
        block_forever()
    elif mode == "ignore_eof":
        serve()
        block_forever()
    elif mode == "stderr_flood":
        sys.stderr.write(SECRET_LINE + "\n")
        sys.stderr.write("x" * LONG_STDERR + "\n")
        for n in range(FLOOD - 2):
            sys.stderr.write(f"flood line {n}\n")
        sys.stderr.flush()
        sys.stderr.close()
        os.close(2)
        serve()
    elif mode == "crash_after":
        serve(crash_after=int(argv[1]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
