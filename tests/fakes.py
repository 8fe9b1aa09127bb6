"""Fakes for unit tests: calls and replies without a network, a clock that never sleeps."""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.classify import classify
from proxy.jsonrpc import parse_message
from proxy.policies.base import Call, Reply


def make_call(body: bytes = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', **headers: str) -> Call:
    message = parse_message(body)
    incoming = CIMultiDict(headers)
    return classify("up", message, body, incoming, CIMultiDict(), "127.0.0.1", None)


def reply_ok(request_id: int = 1) -> Reply:
    return Reply(200, CIMultiDict({"Content-Type": "application/json"}), body=b"{}", message={"jsonrpc": "2.0", "id": request_id, "result": {}})


class FakeClock:
    """Monotonic time that moves only when told to, or when a policy sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds
