"""The bot's own small HTTP server: stored voice embeddings under unguessable URLs, and ``/healthz``.

Started by :class:`bot.embeddings.EmbeddingHost` only when ``PUBLIC_BASE_URL`` is set. Routes:

* ``GET /healthz`` → 200 ``{"status": "ok", "database": "ok"}`` (503 ``{"status": "error", …}`` when
  the database does not answer);
* ``GET /embeddings/{token}/{filename}`` → the stored bytes. ``token`` is ``secrets.token_urlsafe(32)``
  (256 random bits) looked up by its unique index, and ``filename`` must match too;
* everything else → 404. There is no listing, and a wrong token, a wrong filename and a missing route
  are indistinguishable.

The access log is off: the paths are capability URLs and do not belong in log files.
"""

from __future__ import annotations

import json
import logging
import re

from aiohttp import web

from bot.storage import Database

log = logging.getLogger(__name__)

# secrets.token_urlsafe(32) gives 43 characters of [A-Za-z0-9_-]; accept a little slack, nothing else.
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
# Content types we are willing to serve as they were stored; anything else is sent as opaque bytes,
# so a file can never be rendered as a page on the operator's domain.
SAFE_CONTENT_TYPES = frozenset({
    "application/octet-stream",
    "application/x-safetensors",
    "application/safetensors",
})
JSON = "application/json"


def _json(status: int, body: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=JSON,
                        headers={"Cache-Control": "no-store"})


def _not_found() -> web.Response:
    return web.Response(status=404, text="404: Not Found", headers={"Cache-Control": "no-store"})


class EmbeddingServer:
    """aiohttp server for stored files. ``start``/``close``; ``port`` is the bound port once started."""

    def __init__(self, db: Database, host: str, port: int) -> None:
        self.db = db
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/embeddings/{token}/{filename}", self.embedding)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.requested_port)
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot serve HTTP on %s:%s (HTTP_PORT): %s", self.host, self.requested_port, exc)
            await runner.cleanup()
            raise
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses  # the real port, also when 0 was asked
        self.port = addresses[0][1] if addresses else self.requested_port
        log.info("HTTP server listening on %s:%s", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            await self.db.ping()
        except Exception:
            log.warning("health check: the database did not answer", exc_info=True)
            return _json(503, {"status": "error", "database": "unavailable"})
        return _json(200, {"status": "ok", "database": "ok"})

    async def embedding(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        filename = request.match_info["filename"]
        if not TOKEN_PATTERN.match(token):
            return _not_found()
        found = await self.db.files.by_token(token)
        if found is None:
            return _not_found()
        meta, data = found
        if filename != meta.filename:
            return _not_found()
        content_type = (meta.content_type or "").split(";")[0].strip().lower()
        if content_type not in SAFE_CONTENT_TYPES:
            content_type = "application/octet-stream"
        return web.Response(
            body=data,
            content_type=content_type,
            headers={
                "Cache-Control": "private, max-age=3600",
                "X-Content-Type-Options": "nosniff",
                "Content-Disposition": "attachment",
                "ETag": f'"{meta.sha256}"',
            },
        )
