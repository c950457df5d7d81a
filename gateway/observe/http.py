"""A minimal local HTTP endpoint for the metrics: GET /metrics (Prometheus text) and GET /stats (JSON).

It answers one small GET per connection and closes; anything else gets 404/405. It binds to loopback by
default: metrics say which devices were refused and why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from gateway.observe.metrics import PROM_CONTENT_TYPE, Metrics

MAX_REQUEST = 8192


async def start_metrics_server(metrics: Metrics, host: str, port: int,
                               refresh: Callable[[], object] | None = None) -> asyncio.base_events.Server:
    """Serve the metrics; ``refresh`` (if given) brings the counters up to date before each answer."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            request = head[:MAX_REQUEST].split(b"\r\n", 1)[0].decode("latin-1").split()
            if refresh is not None:
                refresh()
            if len(request) < 2 or request[0] != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif request[1].split("?")[0] == "/metrics":
                status, ctype, body = "200 OK", PROM_CONTENT_TYPE, metrics.prometheus()
            elif request[1].split("?")[0] == "/stats":
                status, ctype, body = "200 OK", "application/json", orjson.dumps(metrics.stats()) + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics or /stats\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST)
