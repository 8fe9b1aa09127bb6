"""A real stdio server reached directly over raw pipes: the reference a proxied answer is compared with.

The harm suite for stdio upstreams (``test_stdio_harm.py``) never hard-codes what a server answers to a
client's mistake: it asks the same server, run as its own process, the same question and compares. Raw
pipes rather than the SDK's stdio transport, because the questions include lines the SDK's client would
refuse to send (a lone surrogate escape, a UTF-8 BOM, ``1e999``).

The server is initialized as the proxy initializes its children (protocol 2025-11-25, the capabilities
of ``CLIENT_CAPABILITIES``), so it lists and validates exactly what it does behind the proxy. A
``roots/list`` it asks is answered with no roots, as the proxy answers it when no client can be asked.

A server may read a line and answer nothing (the Python SDK drops a line it cannot validate, without a
word on stderr), so a raw line's answer (:meth:`DirectStdio.ask`) is told apart from none with a fence: a ``ping`` sent after the
question; the question's answer is then awaited for at most :data:`QUIET_S` more. That window can only
make the suite more lenient (an answer later than it counts as none), never flaky.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Final

from proxy.upstream.stdio.gateway import CLIENT_CAPABILITIES
from tests.conftest import REPO
from tests.e2e.stdio_support import WAIT_S, StdioServer
from tests.sdk_helpers import LEGACY_VERSION

QUIET_S: Final = 0.5
"""How long past the fence's answer a question's answer is still awaited before it counts as none."""
FENCE_ID: Final = "direct-fence"


class DirectStdio:
    """One server process over raw pipes, initialized; one question at a time (:meth:`ask`)."""

    def __init__(self, server: StdioServer, process: asyncio.subprocess.Process) -> None:
        self.server = server
        self._process = process
        self._answers: dict[Any, dict[str, Any]] = {}
        self._next_id = 1000
        self._known: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, server: StdioServer) -> DirectStdio:
        argv = server.argv()
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=str(REPO),
        )
        direct = cls(server, process)
        init = {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": dict(CLIENT_CAPABILITIES),
            "clientInfo": {"name": "direct", "version": "1"},
        }
        answer = await direct._exchange({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}, 0)
        assert answer is not None and "result" in answer, f"{server}: initialize answered {answer}"
        await direct._write({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return direct

    async def close(self) -> None:
        """EOF on stdin: every server measured exits 0 on it."""
        stdin = self._process.stdin
        assert stdin is not None
        stdin.close()
        try:
            async with asyncio.timeout(WAIT_S):
                await self._process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        """`method` with `params` under an id of this helper's; the server's answer (its id left out).
        A well-formed request is always answered, however slowly (the SDK server takes ~0.4 s to
        refuse an unknown prompt): no fence."""
        request_id = self._next_id
        self._next_id += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            body["params"] = params
        async with self._lock:
            answer = await self._exchange(body, request_id)
        assert answer is not None
        return {key: value for key, value in answer.items() if key != "id"}

    async def reference(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        """:meth:`request`, asked once per (method, params): a server answers a mistake the same way every
        time, and the SDK server takes ~0.4 s to refuse a prompt (a rich traceback on its stderr)."""
        key = json.dumps([method, params], sort_keys=True)
        if key not in self._known:
            self._known[key] = await self.request(method, params)
        return self._known[key]

    async def ask(self, line: bytes, request_id: Any) -> dict[str, Any] | None:
        """Write `line` as it is and return the answer whose id equals `request_id` (``1 == 1.0``: a
        server may write ``1.0`` back as ``1``), without its id; None if the server answered nothing
        (see the module docstring)."""
        async with self._lock:
            answer = await self._exchange(line, request_id, fenced=True)
        if answer is None:
            return None
        return {key: value for key, value in answer.items() if key != "id"}

    async def _write(self, body: dict[str, Any] | bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        line = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        stdin.write(line + b"\n")
        await stdin.drain()

    async def _exchange(
        self, body: dict[str, Any] | bytes, request_id: Any, fenced: bool = False
    ) -> dict[str, Any] | None:
        await self._write(body)
        if fenced:
            await self._write({"jsonrpc": "2.0", "id": FENCE_ID, "method": "ping"})
        fence_seen = not fenced
        async with asyncio.timeout(WAIT_S):
            while True:
                if request_id in self._answers:
                    return self._answers.pop(request_id)
                if fence_seen and fenced:
                    try:
                        async with asyncio.timeout(QUIET_S):
                            await self._read_one()
                    except TimeoutError:
                        return None
                    continue
                await self._read_one()
                if FENCE_ID in self._answers:
                    del self._answers[FENCE_ID]
                    fence_seen = True

    async def _read_one(self) -> None:
        """Read one line of the server's: an answer is kept by its id; a question is answered."""
        stdout = self._process.stdout
        assert stdout is not None
        line = await stdout.readline()
        assert line, f"{self.server}: the server closed its stdout (exit code {self._process.returncode})"
        message = json.loads(line)
        if not isinstance(message, dict):
            return
        method = message.get("method")
        if method is None:
            self._answers[message.get("id")] = message
        elif "id" in message:
            if method == "roots/list":
                await self._write({"jsonrpc": "2.0", "id": message["id"], "result": {"roots": []}})
            else:
                error = {"code": -32601, "message": f"the direct reference client answers no {method}"}
                await self._write({"jsonrpc": "2.0", "id": message["id"], "error": error})
