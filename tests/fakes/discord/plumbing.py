"""The emulator's HTTP layer: every request recorded (:class:`RecordedRequest`, multipart parsed exactly),
faults and holds injected by tests (``fail_next``, ``hold_next``), Discord-shaped errors, unknown routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from .protocol import API_PREFIX, DiscordAPIError


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Part:
    """One multipart part as received."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes

    def text(self) -> str:
        return self.data.decode()


@dataclass
class RecordedRequest:
    index: int
    method: str
    path: str  # without the /api/v10 prefix for API routes ("/channels/1/messages"), else the raw path
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    parts: list[Part] = field(default_factory=list)
    status: int | None = None
    response: Any = None
    faulted: bool = False
    time: float = 0.0
    #: The TCP port the request came from, and the process it names (``emu.client_of(port)``, when set): which
    #: of several bot processes sent it (tests/fixtures_processes.py).
    peer_port: int | None = None
    client: str | None = None

    @property
    def payload(self) -> Any:
        """The JSON body, or the parsed ``payload_json`` part of a multipart body."""
        if self.json is not None:
            return self.json
        for part in self.parts:
            if part.name == "payload_json":
                return json.loads(part.data)
        return None

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    @property
    def files(self) -> list[Part]:
        return [p for p in self.parts if p.name.startswith("files[")]


_REC = web.RequestKey("rec", RecordedRequest)  # the record of the request being handled


@dataclass
class _Fault:
    method: str
    path_re: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str]
    times: int
    after_effect: bool = False


@dataclass
class _Hold:
    method: str
    path_re: re.Pattern[str]
    seconds: float
    times: int
    where: Callable[[RecordedRequest], bool] | None = None


_PARAM_RE = re.compile(r';\s*([\w*]+)=("(?:[^"\\]|\\.)*"|[^;]*)')


def _parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a multipart/form-data body exactly (binary-safe)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        return []
    delimiter = b"--" + m.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, _, data = chunk.partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        disposition = headers.get("content-disposition", "")
        params = {k.lower(): v.strip('"') for k, v in _PARAM_RE.findall(disposition)}
        filename = params.get("filename")
        if "filename*" in params:
            filename = unquote(params["filename*"].split("''", 1)[-1])
        parts.append(Part(params.get("name", ""), filename, headers.get("content-type"), data))
    return parts


class PlumbingMixin:
    """Recording, fault injection and the middleware every request passes (see :class:`DiscordEmulator`)."""

    # ------------------------------------------------------------------ requests and faults

    def mark(self) -> int:
        """The index of the next request, for ``wait_for_request(..., since=emu.mark())``."""
        return len(self.requests)

    def find_requests(self, method: str, path_regex: str, *, since: int = 0,
                      predicate: Callable[[RecordedRequest], bool] | None = None) -> list[RecordedRequest]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests[since:]
                if (method == "*" or r.method == method.upper()) and pattern.search(r.path)
                and (predicate is None or predicate(r))]

    async def wait_for_request(self, method: str, path_regex: str, timeout: float = 5.0, predicate:  # noqa: ASYNC109
                               Callable[[RecordedRequest], bool] | None = None, *, since: int = 0) -> RecordedRequest:
        """The first handled request at index >= ``since`` matching method (``"*"`` = any) and path regex."""
        found: list[RecordedRequest] = []

        def check() -> bool:
            found[:] = self.find_requests(method, path_regex, since=since, predicate=predicate)
            return bool(found)
        await self.wait_until(check, timeout, f"request {method} {path_regex}")
        return found[0]

    def hold_next(self, method: str, path_regex: str, seconds: float, times: int = 1,
                  where: Callable[[RecordedRequest], bool] | None = None) -> None:
        """Keep the next ``times`` matching requests (and ``where(request)``) waiting ``seconds`` before they
        are handled (a slow Discord); each appears in :attr:`held` as soon as it arrives."""
        self._holds.append(_Hold(method.upper(), re.compile(path_regex), seconds, times, where))

    def fail_next(self, method: str, path_regex: str, status: int, json_body: Any = None, times: int = 1,
                  headers: dict[str, str] | None = None, *, after_effect: bool = False) -> None:
        """Answer the next ``times`` requests matching (method or ``"*"``, regex searched in the path
        without the /api/v10 prefix) with ``status``. A 429 gets Discord's rate-limit headers and body
        unless given. ``after_effect``: the request takes effect first and only its answer is the error
        (a proxy or Discord failing after the message was created); with status 0 the connection drops
        instead of answering."""
        hdrs = dict(headers or {})
        if status == 429:
            body = json_body if json_body is not None else {
                "message": "You are being rate limited.", "retry_after": 0.05, "global": False}
            retry_after = float(body.get("retry_after", 0.05)) if isinstance(body, dict) else 0.05
            defaults = {
                "Retry-After": str(max(1, int(retry_after + 0.999))),
                "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": secrets.token_hex(16),
                "X-RateLimit-Scope": "user" if not (isinstance(body, dict) and body.get("global")) else "global",
            }
            if isinstance(body, dict) and body.get("global"):
                defaults["X-RateLimit-Global"] = "true"
            hdrs = {**defaults, **hdrs}
        else:
            body = json_body if json_body is not None else {"message": f"{status}: emulated failure", "code": 0}
        self._faults.append(_Fault(method.upper(), re.compile(path_regex), status, body, hdrs, times, after_effect))

    # ------------------------------------------------------------------------ HTTP plumbing

    @staticmethod
    def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        # body= (not text=) keeps Content-Type exactly "application/json": discord.py needs that value.
        return web.Response(status=status, body=_dumps(body), content_type="application/json", headers=headers)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        rec = await self._record(request)
        request[_REC] = rec
        if request.path == "/gateway":
            self.requests.append(rec)
            self._notify()
            return await handler(request)
        hold = next((h for h in self._holds if (h.method in ("*", rec.method)) and h.path_re.search(rec.path)
                     and (h.where is None or h.where(rec))), None)
        if hold is not None:
            hold.times -= 1
            if hold.times <= 0:
                self._holds.remove(hold)
            self.held.append(rec)
            self._notify()
            await asyncio.sleep(hold.seconds)
        fault = next((f for f in self._faults if (f.method in ("*", rec.method)) and f.path_re.search(rec.path)), None)
        response: web.StreamResponse
        if fault is not None and fault.after_effect:
            with contextlib.suppress(Exception):
                await handler(request)
            if fault.status == 0:  # the connection drops before the answer: the bot can't know it worked
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                rec.faulted = True
                self.requests.append(rec)
                self._notify()
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
        if fault is not None:
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            rec.faulted = True
            response = self._json(fault.body, fault.status, fault.headers)
            rec.response = fault.body
        else:
            try:
                response = await handler(request)
            except DiscordAPIError as e:
                rec.response = e.body()
                response = self._json(e.body(), e.status, e.headers)
            except web.HTTPException:
                raise
            except Exception as e:  # an emulator bug: answer 400 at once (a 5xx would make discord.py retry)
                self.internal_errors.append(f"{rec.method} {rec.path}: {e!r}\n{traceback.format_exc()}")
                rec.response = {"message": f"emulator internal error: {e!r}", "code": 0}
                response = self._json(rec.response, 400)
        if request.path.startswith(API_PREFIX):
            response.headers.setdefault("Via", "1.1 google")
        rec.status = response.status
        self.requests.append(rec)
        self._notify()
        # Write the answer here (not after returning) so that "the bot has been sent every answer" is knowable:
        # interactions aimed at a message wait for it (see _before_user_acts_on_a_message).
        self.answers_in_flight += 1
        try:
            await response.prepare(request)
            await response.write_eof()
        finally:
            self.answers_in_flight -= 1
            self._notify()
        return response

    async def _record(self, request: web.Request) -> RecordedRequest:
        path = request.path
        short = path[len(API_PREFIX):] if path.startswith(API_PREFIX + "/") else path
        body = b"" if path == "/gateway" else await request.read()
        rec = RecordedRequest(index=len(self.requests), method=request.method, path=short, raw_path=path,
                              query=dict(request.query), headers=dict(request.headers), body=body, time=time.time())
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            rec.peer_port = int(peer[1])
            if self.client_of is not None:  # while the connection is surely open
                rec.client = self.client_of(rec.peer_port)
        ctype = request.headers.get("Content-Type", "")
        if body and ctype.startswith("application/json"):
            with contextlib.suppress(ValueError):
                rec.json = json.loads(body)
        elif body and ctype.startswith("multipart/form-data"):
            rec.parts = _parse_multipart(body, ctype)
        return rec

    async def _unknown(self, request: web.Request) -> web.Response:
        rec: RecordedRequest = request[_REC]
        self.unknown_routes.append(rec)
        return self._json({"message": f"404: Not Found (emulator has no route for {request.method} {rec.path})",
                           "code": 0}, 404)

    def _require_bot(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise DiscordAPIError(401, 0, "401: Unauthorized")

    @staticmethod
    def _body(request: web.Request) -> tuple[dict[str, Any], dict[int, Part]]:
        """(JSON payload, {file index: part}) of a JSON or multipart request."""
        rec: RecordedRequest = request[_REC]
        payload = rec.payload
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise DiscordAPIError(400, 50109, "The request body contains invalid JSON.")
        files: dict[int, Part] = {}
        for part in rec.parts:
            m = re.fullmatch(r"files\[(\d+)\]|file(\d*)", part.name)
            if m:
                files[int(m.group(1) or m.group(2) or 0)] = part
        return payload, files
