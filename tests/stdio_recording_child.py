"""A stdio MCP child that records every line it reads: ``python -m tests.stdio_recording_child RECORD``.

Standard library only. It appends ``{"pid": ..., "message": ...}`` to the file RECORD for every JSON line
it reads (flushed at once, so a test can wait on what the child was sent), and serves a minimal MCP
server that never blocks its read loop. Environment:

- ``CAPS_PATH``: a file holding the capabilities to declare (JSON), read at each start: a test rewrites
  it to make the next generation a different server. Absent: `CAPABILITIES`;
- ``NO_PING=1``: ``ping`` is recorded and never answered;
- ``HOLD_SUBSCRIBE=1``: ``resources/subscribe`` is answered only when the tool ``release`` is called
  (a slow server's window between a subscribe sent and its answer).

Requests it answers: ``initialize``, ``ping``, ``logging/setLevel``, ``resources/subscribe`` and
``resources/unsubscribe`` (``{}``), ``tools/list``; any other method is -32601. Its tools:

- ``echo`` {text}; ``release``: answers the held subscribes; ``hang``: never answered; ``exit`` {code}: exits at once, unanswered; ``pid``;
- ``progress`` {count, hang}: `count` progress notifications under the request's token, then the answer
  (none with ``hang``);
- ``log`` {level, data}: one ``notifications/message``, then the answer;
- ``notify`` {method, params}: that notification, then the answer;
- ``ask`` {method, params}: a request of its own to the client (id ``ask-N``); the tool's answer is the
  client's whole response as JSON text, once it comes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from tests.stdio_children import answer, send, text

CAPABILITIES: dict[str, Any] = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "logging": {},
}
SERVER_INFO = {"name": "recording-child", "version": "1.0"}


def capabilities() -> dict[str, Any]:
    path = os.environ.get("CAPS_PATH")
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            loaded: dict[str, Any] = json.load(file)
            return loaded
    return CAPABILITIES


class Server:
    def __init__(self, record: str) -> None:
        self.record = open(record, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life
        self.asked: dict[str, Any] = {}
        """The child's own questions in flight: their id -> the tool call waiting on the answer."""
        self.asks = 0
        self.held: list[Any] = []
        """Held ``resources/subscribe`` requests' ids (``HOLD_SUBSCRIBE``)."""

    def note(self, message: Any) -> None:
        self.record.write(json.dumps({"pid": os.getpid(), "message": message}) + "\n")
        self.record.flush()

    def serve(self) -> None:
        for raw in sys.stdin:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            self.note(message)
            if isinstance(message, dict):
                self.handle(message)

    def handle(self, message: dict[str, Any]) -> None:
        method, request_id = message.get("method"), message.get("id")
        params = message.get("params") or {}
        if method is None:
            waiting = self.asked.pop(request_id, None) if isinstance(request_id, str) else None
            if waiting is not None:
                answer(waiting, text(json.dumps(message)))
            return
        if request_id is None:
            return
        if method == "initialize":
            answer(
                request_id,
                {"protocolVersion": "2025-11-25", "capabilities": capabilities(), "serverInfo": SERVER_INFO},
            )
        elif method == "ping":
            if os.environ.get("NO_PING") != "1":
                answer(request_id, {})
        elif method == "resources/subscribe" and os.environ.get("HOLD_SUBSCRIBE") == "1":
            self.held.append(request_id)
        elif method in ("logging/setLevel", "resources/subscribe", "resources/unsubscribe"):
            answer(request_id, {})
        elif method == "tools/list":
            names = ("echo", "release", "hang", "exit", "pid", "progress", "log", "notify", "ask")
            answer(request_id, {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in names]})
        elif method == "tools/call":
            self.call(request_id, params)
        else:
            send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "Method not found"}})

    def call(self, request_id: Any, params: dict[str, Any]) -> None:
        name, args = params.get("name"), params.get("arguments") or {}
        if name == "echo":
            answer(request_id, text(str(args.get("text", ""))))
        elif name == "hang":
            return
        elif name == "release":
            for held in self.held:
                answer(held, {})
            answer(request_id, text(str(len(self.held))))
            self.held.clear()
        elif name == "exit":
            os._exit(int(args.get("code", 0)))
        elif name == "pid":
            answer(request_id, text(str(os.getpid())))
        elif name == "progress":
            token = (params.get("_meta") or {}).get("progressToken")
            for n in range(int(args.get("count", 1))):
                progress = {"progressToken": token, "progress": n, "total": int(args.get("count", 1))}
                send({"jsonrpc": "2.0", "method": "notifications/progress", "params": progress})
            if not args.get("hang"):
                answer(request_id, text("done"))
        elif name == "log":
            level, data = args.get("level", "info"), args.get("data")
            send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": level, "data": data}})
            answer(request_id, text("logged"))
        elif name == "notify":
            notification: dict[str, Any] = {"jsonrpc": "2.0", "method": args["method"]}
            if args.get("params") is not None:
                notification["params"] = args["params"]
            send(notification)
            answer(request_id, text("notified"))
        elif name == "ask":
            self.asks += 1
            key = f"ask-{self.asks}"
            self.asked[key] = request_id
            send({"jsonrpc": "2.0", "id": key, "method": args["method"], "params": args.get("params") or {}})
        else:
            send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": f"unknown tool {name}"}})


if __name__ == "__main__":
    Server(sys.argv[1]).serve()
