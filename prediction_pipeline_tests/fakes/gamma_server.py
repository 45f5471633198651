"""A fake Polymarket Gamma API on a real loopback socket, for client and pipeline tests.

`FakeGammaServer` serves `GET /markets/keyset` over a universe of market records with the
real endpoint's shape and rules (`limit` <= 100, opaque `after_cursor`/`next_cursor`, filters
`closed`, `active`, `condition_ids`, `end_date_min`/`end_date_max`, `order`/`ascending`), and
records every request. Scripted replies (`Reply`) queued with `enqueue` are served first, in
order: error statuses with headers, stalls longer than the client timeout, dropped
connections, malformed bodies.

    with FakeGammaServer([gamma_market(i) for i in range(250)]) as server:
        client = GammaClient(base_url=server.url)
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

KEYSET_PATH = "/markets/keyset"
MAX_LIMIT = 100
DEFAULT_LIMIT = 20


class _Serve:
    def __repr__(self) -> str:
        return "SERVE"


SERVE: Any = _Serve()
"""`Reply.body` default: answer from the universe, as the real endpoint would."""


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `delay` stalls before answering; `drop` closes the connection
    without answering; a `str`/`bytes` body is sent raw, anything else as JSON. With the
    default body, a 200 is answered from the universe and any other status gets a small
    JSON error body."""

    status: int = 200
    body: Any = SERVE
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def params(self, name: str) -> list[str]:
        return list(self.query.get(name, []))


def gamma_market(i: int, **overrides: Any) -> dict[str, Any]:
    """A well-formed modern Gamma market record (JSON-string list fields, tags on the event)."""
    yes = round(0.05 + (i * 37 % 90) / 100, 3)
    volume = 1_000_000.0 / (i + 1)
    record: dict[str, Any] = {
        "id": str(500_000 + i),
        "question": f"Will event number {i} happen?",
        "conditionId": f"0x{i:064x}",
        "slug": f"will-event-number-{i}-happen",
        "description": f"Resolves Yes if event {i} happens.",
        "endDate": (dt.datetime(2026, 12, 1, tzinfo=dt.UTC) + dt.timedelta(days=i % 60))
        .isoformat()
        .replace("+00:00", "Z"),
        "outcomes": '["Yes", "No"]',
        "outcomePrices": json.dumps([str(yes), str(round(1 - yes, 3))]),
        "clobTokenIds": json.dumps([str(10**20 + 2 * i), str(10**20 + 2 * i + 1)]),
        "volume": f"{volume:.6f}",
        "volumeNum": volume,
        "liquidity": f"{volume / 20:.4f}",
        "liquidityNum": volume / 20,
        "active": True,
        "closed": False,
        "events": [{"id": str(9000 + i), "tags": [{"id": "2", "label": "Politics"}]}],
    }
    record.update(overrides)
    return record


class FakeGammaServer:
    """The fake Gamma API on 127.0.0.1 (port chosen by the OS), served from a thread."""

    def __init__(self, markets: list[Any] | None = None) -> None:
        self.markets: list[Any] = list(markets or [])
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeGammaServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeGammaServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting and inspection ---------------------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        """Serve these replies, in order, to the next requests (before the universe)."""
        with self._lock:
            self._replies.extend(replies)

    def recorded(self, path: str = KEYSET_PATH) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # -- the endpoint ---------------------------------------------------------------------

    def keyset_page(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        """What the real endpoint would answer for `query`: (status, JSON body)."""
        try:
            limit = int(query.get("limit", [str(DEFAULT_LIMIT)])[0])
        except ValueError:
            return 400, {"error": "limit must be an integer"}
        if not 1 <= limit <= MAX_LIMIT:
            return 400, {"error": f"limit must be between 1 and {MAX_LIMIT}"}
        cursor = query.get("after_cursor", [None])[0]
        try:
            offset = _decode_cursor(cursor) if cursor else 0
        except ValueError:
            return 400, {"error": "invalid after_cursor"}

        with self._lock:
            items = [m for m in self.markets if _matches(m, query)]
        order = query.get("order", [None])[0]
        if order:
            ascending = query.get("ascending", ["false"])[0] == "true"
            items.sort(key=lambda m: _sort_key(m, order), reverse=not ascending)
        page = items[offset : offset + limit]
        end = offset + len(page)
        next_cursor = _encode_cursor(end) if end < len(items) else None
        return 200, {"markets": page, "next_cursor": next_cursor}

    def _next_reply(self) -> Reply | None:
        with self._lock:
            return self._replies.popleft() if self._replies else None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                parts = urlsplit(self.path)
                query = parse_qs(parts.query, keep_blank_values=True)
                with server._lock:
                    server.requests.append(RecordedRequest("GET", parts.path, query))
                reply = server._next_reply() or Reply()
                if reply.delay and server._stopping.wait(reply.delay):
                    self.close_connection = True
                    return
                if reply.drop:
                    self.close_connection = True
                    return
                status, body = reply.status, reply.body
                if body is SERVE and status != 200:
                    body = {"error": f"scripted HTTP {status}"}
                elif body is SERVE:
                    if parts.path == KEYSET_PATH:
                        status, body = server.keyset_page(query)
                    else:
                        status, body = 404, {"error": "not found"}
                self._send(status, body, reply.headers)

            def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
                if isinstance(body, bytes):
                    payload, ctype = body, "application/octet-stream"
                elif isinstance(body, str):
                    payload, ctype = body.encode(), "text/html; charset=utf-8"
                else:
                    payload, ctype = json.dumps(body).encode(), "application/json"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (timeout): fine

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler


def _matches(market: Any, query: dict[str, list[str]]) -> bool:
    if not isinstance(market, dict):
        return True  # malformed records travel with the page, as in real data
    for flag in ("closed", "active"):
        if flag in query and _flag(market.get(flag)) != (query[flag][0] == "true"):
            return False
    ids = query.get("condition_ids")
    if ids and market.get("conditionId") not in set(ids):
        return False
    end = str(market.get("endDate") or "")
    if "end_date_min" in query and (not end or _ts(end) < _ts(query["end_date_min"][0])):
        return False
    return not ("end_date_max" in query and (not end or _ts(end) > _ts(query["end_date_max"][0])))


def _flag(value: Any) -> bool:
    return value is True or value == "true"


def _ts(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _sort_key(market: Any, order: str) -> float:
    if not isinstance(market, dict):
        return 0.0
    try:
        return float(market.get(order) or 0)
    except (TypeError, ValueError, OverflowError):  # hostile records travel in pages too
        return 0.0


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(cursor) from exc
    prefix, _, number = text.partition(":")
    if prefix != "offset" or not number.isdigit():
        raise ValueError(cursor)
    return int(number)
