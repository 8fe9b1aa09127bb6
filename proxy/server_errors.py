"""aiohttp's own error answers, as JSON-RPC errors: never plain text, never an HTML traceback page.

aiohttp answers a request it cannot parse (over 8 KiB of headers, a broken chunk size, no `Host`) or a
handler that crashed before answering with a text or HTML page of its own. An MCP client cannot read
those, so the MCP listener's request handler renders them as JSON-RPC errors instead, and logs them
through structlog like every other failure. aiohttp has no public hook for this: `JsonRpcServer`
overrides `web.Server.__call__`, and `tests/test_forwarding.py` pins the behaviour against upgrades.
"""

from __future__ import annotations

from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, error_body

__all__ = ["JsonRpcServer"]

log = structlog.get_logger("proxy")


class _JsonRpcErrors(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # part of an answer is out: nothing else can be said
            raise ConnectionError("response already started; cannot send an error")
        if status >= 500:
            log.error("handler_crashed", status=status, error=repr(exc), exc_info=exc)
        else:
            log.warning("bad_http_request", status=status, error=message or repr(exc))
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        code = INTERNAL_ERROR if status >= 500 else INVALID_REQUEST
        reason = "internal_error" if status >= 500 else "bad_http_request"
        body = error_body(None, code, f"{status} {phrase}", {"reason": reason})
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


class JsonRpcServer(web.Server):
    """`web.Server` whose connections answer aiohttp-level errors in JSON-RPC."""

    def __call__(self) -> RequestHandler:
        return _JsonRpcErrors(self, loop=self._loop, **self._kwargs)
