"""A fake OpenRouter chat-completions API on a real loopback socket, for tests and benchmarks.

`FakeOpenRouterServer` answers ``POST /api/v1/chat/completions`` with OpenRouter's response
shape (``choices``, ``usage`` with tokens and ``cost``, ``provider``, ``id``). A valid answer is
deterministic per (model, prompt): the probability comes from a hash of the model and the
market question (`answer_for`). Faults can be scripted:

- per request order: ``server.enqueue(Fault.UNAVAILABLE, Fault.OK, ...)`` serves these to the
  next requests, in order;
- per market question keyword: ``server.on_keyword("Mars", Fault.GARBAGE, Fault.GARBAGE)``
  serves these, in order, to the requests whose messages contain "Mars" (``forever=True``
  repeats them for good);

and `Behaviour` carries a fault's parameters (Retry-After, delay). The enforcing mode, for
benchmarks, models a provider's limits: at most `rate_limit` requests per second (token bucket
of capacity `burst`; excess gets 429 with Retry-After), at most `max_in_flight` concurrent
requests (excess gets 429 without Retry-After), lognormal latency around `latency_mean`, and
a seeded fraction `fault_rate` of random 500/502/503.

Every request is recorded (headers with the Authorization value redacted, the JSON body).
No pytest here: benchmarks use it too.

    with FakeOpenRouterServer(api_key="sk-test") as server:
        client = OpenRouterClient("sk-test", base_url=server.base_url)
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import math
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_COMPLETIONS_PATH = "/api/v1/chat/completions"
REDACTED = "[redacted]"


class Fault(enum.Enum):
    """What the server does with one request instead of (or on top of) a valid answer."""

    OK = "ok"  # a valid answer
    RATE_LIMITED = "rate_limited"  # 429 (Retry-After from Behaviour.retry_after)
    SERVER_ERROR = "server_error"  # 500
    BAD_GATEWAY = "bad_gateway"  # 502
    UNAVAILABLE = "unavailable"  # 503 (Retry-After when Behaviour.retry_after is set)
    REQUEST_TIMEOUT = "request_timeout"  # 408
    ERROR_IN_200 = "error_in_200"  # HTTP 200 with an {"error": {...}} body
    FINISH_ERROR = "finish_error"  # HTTP 200, choices[0].finish_reason == "error"
    NO_CHOICES = "no_choices"  # HTTP 200, "choices": []
    GARBAGE = "garbage"  # a valid envelope whose content is not JSON
    OUT_OF_RANGE = "out_of_range"  # content JSON with probability 1.7
    TRUNCATED = "truncated"  # content cut short, finish_reason "length"
    DROP = "drop"  # close the connection without answering
    SLOW = "slow"  # sleep Behaviour.delay seconds, then a valid answer
    UNAUTHORIZED = "unauthorized"  # 401
    NO_CREDITS = "no_credits"  # 402, out of credits
    IN_FLIGHT_BUDGET = "in_flight_budget"  # 402, metadata.reason in_flight_budget_exhausted
    BAD_REQUEST = "bad_request"  # 400
    MODERATION = "moderation"  # 403, input flagged


@dataclass(frozen=True)
class Behaviour:
    """A fault with its parameters. `retry_after` (seconds, sent as given) goes with 429/503;
    None sends no Retry-After. `delay` is how long SLOW sleeps (and any fault may stall
    first by `delay`)."""

    fault: Fault = Fault.OK
    retry_after: float | None = None
    delay: float = 0.0

    @classmethod
    def of(cls, item: Fault | Behaviour) -> Behaviour:
        if isinstance(item, Behaviour):
            return item
        if item is Fault.RATE_LIMITED:
            return cls(item, retry_after=1.0)
        if item is Fault.SLOW:
            return cls(item, delay=2.0)
        return cls(item)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (the Authorization value is never kept)."""

    index: int  # 1-based arrival order
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; authorization redacted
    body: Any  # decoded JSON, or None when the body was not JSON
    auth_ok: bool | None  # the bearer matched `api_key` (None when no key is configured)

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[dict]:
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return messages if isinstance(messages, list) else []

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


_QUESTION = re.compile(r"^Question:\s*(.+)$", re.MULTILINE)


def question_of(messages: list[dict]) -> str:
    """The market question in a prompt (the ``Question:`` line of `core.prompts`), else the
    last user message."""
    text = _user_text(messages)
    found = _QUESTION.search(text)
    return found.group(1).strip() if found else text


def _user_text(messages: list[dict]) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return content if isinstance(content, str) else json.dumps(content)


def _all_text(messages: list[dict]) -> str:
    return "\n".join(
        m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
        for m in messages
        if isinstance(m, dict)
    )


def answer_for(model: str, messages: list[dict]) -> dict[str, Any]:
    """The deterministic valid answer for (model, question): probability, confidence and
    rationale, as the model's JSON content would carry them."""
    question = question_of(messages)
    digest = hashlib.sha256(f"{model}\n{question}".encode()).digest()
    probability = round(0.02 + 0.96 * int.from_bytes(digest[:4], "big") / 2**32, 3)
    confidence = ("low", "medium", "high")[digest[4] % 3]
    return {
        "probability": probability,
        "confidence": confidence,
        "rationale": f"Base rates and the time left suggest {probability:.0%} for this question.",
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # benchmarks open many connections at once


class FakeOpenRouterServer:
    """The fake OpenRouter API on 127.0.0.1 (port chosen by the OS), served from a thread."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        rate_limit: float | None = None,
        burst: float | None = None,
        max_in_flight: int | None = None,
        rate_limit_retry_after: bool = True,
        latency_mean: float = 0.0,
        latency_sigma: float = 0.5,
        fault_rate: float = 0.0,
        seed: int = 0,
        prompt_price: float = 1e-6,
        completion_price: float = 4e-6,
        web_search_price: float = 0.02,
        provider: str = "FakeProvider",
    ) -> None:
        """
        - `api_key`: when set, a request whose bearer differs gets 401 (and `auth_ok` False);
        - `rate_limit`: requests per second admitted (token bucket of capacity `burst`,
          default max(1, rate_limit)); excess gets 429, with a Retry-After of the time until
          the next token unless `rate_limit_retry_after` is False;
        - `max_in_flight`: concurrent requests admitted; excess gets 429 without Retry-After;
        - `latency_mean`/`latency_sigma`: lognormal answer latency (mean in seconds, sigma of
          the underlying normal); 0 answers at once;
        - `fault_rate`: fraction of admitted requests answered by a random 500/502/503;
        - `seed`: seeds latency and random faults;
        - prices: `usage.cost` = tokens x price (+ `web_search_price` with the web plugin).
        """
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be > 0")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        self.api_key = api_key
        self.rate_limit = rate_limit
        self.burst = burst if burst is not None else max(1.0, rate_limit or 1.0)
        self.max_in_flight = max_in_flight
        self.rate_limit_retry_after = rate_limit_retry_after
        self.latency_mean = latency_mean
        self.latency_sigma = latency_sigma
        self.fault_rate = fault_rate
        self.prompt_price = prompt_price
        self.completion_price = completion_price
        self.web_search_price = web_search_price
        self.provider = provider

        self.requests: list[RecordedRequest] = []
        self.outcomes: list[str] = []  # outcome of each request, in arrival order
        self.counts: Counter[str] = Counter()  # outcome -> requests
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.total_cost = 0.0  # usage.cost summed over the answers served

        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._queue: deque[Behaviour] = deque()
        self._keywords: list[tuple[str, Iterator[Behaviour] | deque[Behaviour]]] = []
        self._tokens = self.burst
        self._tokens_at = time.monotonic()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self.base_url + CHAT_COMPLETIONS_PATH

    def start(self) -> FakeOpenRouterServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fake-openrouter",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled handlers
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenRouterServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting and inspection ---------------------------------------------------------

    def enqueue(self, *items: Fault | Behaviour) -> None:
        """Serve these behaviours, in order, to the next requests (before keyword rules)."""
        with self._lock:
            self._queue.extend(Behaviour.of(item) for item in items)

    def on_keyword(self, keyword: str, *items: Fault | Behaviour, forever: bool = False) -> None:
        """Requests whose messages contain `keyword` get these behaviours in order (then
        valid answers); with `forever`, the sequence repeats for good."""
        if not items:
            raise ValueError("on_keyword needs at least one behaviour")
        behaviours = [Behaviour.of(item) for item in items]
        source: Iterator[Behaviour] | deque[Behaviour] = (
            itertools.cycle(behaviours) if forever else deque(behaviours)
        )
        with self._lock:
            self._keywords.append((keyword, source))

    def reset(self) -> None:
        """Forget recorded requests, counts and scripts (limits and seed stay)."""
        with self._lock:
            self.requests.clear()
            self.outcomes.clear()
            self.counts.clear()
            self.max_in_flight_seen = self.in_flight
            self.total_cost = 0.0
            self._queue.clear()
            self._keywords.clear()

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def answer_for(self, model: str, messages: list[dict]) -> dict[str, Any]:
        return answer_for(model, messages)

    # -- decisions ------------------------------------------------------------------------

    def _scripted(self, messages: list[dict]) -> Behaviour | None:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if self._keywords:
                text = _all_text(messages)
                for keyword, source in self._keywords:
                    if keyword not in text:
                        continue
                    if isinstance(source, deque):
                        if source:
                            return source.popleft()
                        continue
                    return next(source)
        return None

    def _take_token(self) -> float:
        """0 when a rate token was taken, else seconds until the next one (caller holds lock)."""
        if self.rate_limit is None:
            return 0.0
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._tokens_at) * self.rate_limit)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_limit

    def _latency(self) -> float:
        if self.latency_mean <= 0:
            return 0.0
        sigma = self.latency_sigma
        mu = math.log(self.latency_mean) - sigma * sigma / 2  # E[lognormal] == latency_mean
        with self._lock:
            return self._rng.lognormvariate(mu, sigma)

    def _random_fault(self) -> Behaviour | None:
        if self.fault_rate <= 0:
            return None
        with self._lock:
            if self._rng.random() >= self.fault_rate:
                return None
            fault = self._rng.choice((Fault.SERVER_ERROR, Fault.BAD_GATEWAY, Fault.UNAVAILABLE))
        return Behaviour(fault)

    # -- answers --------------------------------------------------------------------------

    def _usage(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        prompt_tokens = max(1, len(_all_text(body.get("messages") or [])) // 4)
        completion_tokens = max(1, len(content) // 4)
        cost = prompt_tokens * self.prompt_price + completion_tokens * self.completion_price
        if _web_requested(body):
            cost += self.web_search_price
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "cost": round(cost, 10),
            "is_byok": False,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def _completion(
        self, body: dict[str, Any], content: str, finish_reason: str = "stop"
    ) -> dict[str, Any]:
        model = str(body.get("model") or "unknown/model")
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content,
            "refusal": None,
            "reasoning": None,
        }
        if _web_requested(body):
            message["annotations"] = [
                {
                    "type": "url_citation",
                    "url_citation": {
                        "url": "https://example.org/news",
                        "title": "Fake search result",
                        "content": "Nothing to see here.",
                        "start_index": 0,
                        "end_index": 0,
                    },
                }
            ]
        usage = self._usage(body, content)
        with self._lock:
            self.total_cost += usage["cost"]
        return {
            "id": f"gen-{uuid.uuid4().hex[:24]}",
            "provider": self.provider,
            "model": model,
            "object": "chat.completion",
            "created": int(time.time()),
            "choices": [
                {
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                    "native_finish_reason": finish_reason,
                    "message": message,
                }
            ],
            "usage": usage,
        }

    def _respond(self, behaviour: Behaviour, body: dict[str, Any]) -> tuple[int, Any, dict]:
        """(status, JSON body, headers) for a behaviour (not DROP)."""
        fault = behaviour.fault
        model = str(body.get("model") or "unknown/model")
        messages = body.get("messages") or []
        answer = answer_for(model, messages)
        headers: dict[str, str] = {}
        if behaviour.retry_after is not None:
            headers["Retry-After"] = _seconds(behaviour.retry_after)

        def error(status: int, message: str, **metadata: Any) -> tuple[int, Any, dict]:
            payload: dict[str, Any] = {"code": status, "message": message}
            if metadata:
                payload["metadata"] = metadata
            return status, {"error": payload}, headers

        if fault in (Fault.OK, Fault.SLOW):
            return 200, self._completion(body, json.dumps(answer)), headers
        if fault is Fault.RATE_LIMITED:
            return error(429, "Rate limit exceeded: too many requests", provider_name=None)
        if fault is Fault.SERVER_ERROR:
            return error(500, "Internal Server Error")
        if fault is Fault.BAD_GATEWAY:
            return error(502, "Provider returned error", provider_name=self.provider)
        if fault is Fault.UNAVAILABLE:
            return error(503, "No available model provider that meets your routing requirements")
        if fault is Fault.REQUEST_TIMEOUT:
            return error(408, "Request timed out")
        if fault is Fault.UNAUTHORIZED:
            return error(401, "No auth credentials found")
        if fault is Fault.NO_CREDITS:
            return error(402, "Insufficient credits. Add more using https://openrouter.ai/credits")
        if fault is Fault.IN_FLIGHT_BUDGET:
            return error(
                402,
                "Too many requests in flight for your remaining credits",
                reason="in_flight_budget_exhausted",
            )
        if fault is Fault.BAD_REQUEST:
            return error(400, f"{model} does not support the parameter response_format")
        if fault is Fault.MODERATION:
            return error(
                403,
                f"{model} requires moderation on OpenRouter. Your input was flagged",
                reasons=["violence"],
                flagged_input="...",
                provider_name=self.provider,
                model_slug=model,
            )
        if fault is Fault.ERROR_IN_200:
            _, payload, _ = error(502, "Provider returned error", provider_name=self.provider)
            return 200, payload, headers
        if fault is Fault.FINISH_ERROR:
            data = self._completion(body, "", finish_reason="error")
            data["choices"][0]["error"] = {"code": 502, "message": "Upstream stream broke"}
            return 200, data, headers
        if fault is Fault.NO_CHOICES:
            data = self._completion(body, "")
            data["choices"] = []
            return 200, data, headers
        if fault is Fault.GARBAGE:
            content = "I think the answer is probably yes, around seventy percent!"
            return 200, self._completion(body, content), headers
        if fault is Fault.OUT_OF_RANGE:
            content = json.dumps({**answer, "probability": 1.7})
            return 200, self._completion(body, content), headers
        if fault is Fault.TRUNCATED:
            content = json.dumps(answer)[: max(5, len(json.dumps(answer)) // 2)]
            return 200, self._completion(body, content, finish_reason="length"), headers
        raise AssertionError(f"unhandled fault {fault}")

    # -- the endpoint ---------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._read_body()
                self._send(404, {"error": {"code": 404, "message": "Not Found"}}, {})

            def do_POST(self) -> None:  # noqa: N802
                raw = self._read_body()
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                auth_ok: bool | None = None
                if "authorization" in headers:
                    if server.api_key is not None:
                        auth_ok = headers["authorization"] == f"Bearer {server.api_key}"
                    scheme = headers["authorization"].split(" ", 1)[0]
                    headers["authorization"] = f"{scheme} {REDACTED}"
                elif server.api_key is not None:
                    auth_ok = False
                with server._lock:
                    index = len(server.requests) + 1
                    server.requests.append(
                        RecordedRequest(index, "POST", self.path, headers, body, auth_ok)
                    )
                    server.in_flight += 1
                    server.max_in_flight_seen = max(server.max_in_flight_seen, server.in_flight)
                self._recorded = False
                outcome = "crash"
                try:
                    outcome = self._handle(body, auth_ok)
                finally:
                    self._record(outcome)

            def _record(self, outcome: str) -> None:
                # Recorded before the response leaves: a client that has its answer must find
                # the outcome already in the log (recording afterwards raced the test's read).
                if self._recorded:
                    return
                self._recorded = True
                with server._lock:
                    server.in_flight -= 1
                    server.outcomes.append(outcome)
                    server.counts[outcome] += 1

            def _handle(self, body: Any, auth_ok: bool | None) -> str:
                if self.path.split("?", 1)[0] != CHAT_COMPLETIONS_PATH:
                    self._send(
                        404, {"error": {"code": 404, "message": "Not Found"}}, {}, "not_found"
                    )
                    return "not_found"
                if not isinstance(body, dict):
                    self._send(
                        400,
                        {"error": {"code": 400, "message": "Invalid JSON body"}},
                        {},
                        "invalid_json",
                    )
                    return "invalid_json"
                if auth_ok is False:
                    status, payload, headers = server._respond(Behaviour(Fault.UNAUTHORIZED), body)
                    self._send(status, payload, headers, "unauthorized")
                    return "unauthorized"
                # The provider's own limits come first, as on the real service.
                with server._lock:
                    over_in_flight = (
                        server.max_in_flight is not None and server.in_flight > server.max_in_flight
                    )
                    wait = 0.0 if over_in_flight else server._take_token()
                if over_in_flight:
                    self._send(
                        *server._respond(Behaviour(Fault.RATE_LIMITED), body), "429_in_flight"
                    )
                    return "429_in_flight"
                if wait > 0:
                    # Rounded up to the millisecond: a Retry-After of "0" would invite a retry
                    # that is still too early.
                    retry_after = math.ceil(wait * 1000) / 1000
                    retry_after = retry_after if server.rate_limit_retry_after else None
                    behaviour = Behaviour(Fault.RATE_LIMITED, retry_after=retry_after)
                    self._send(*server._respond(behaviour, body), "429_rate")
                    return "429_rate"
                behaviour = (
                    server._scripted(body.get("messages") or [])
                    or server._random_fault()
                    or Behaviour()
                )
                delay = behaviour.delay + (
                    server._latency() if behaviour.fault in (Fault.OK, Fault.SLOW) else 0.0
                )
                if delay > 0 and server._stopping.wait(delay):
                    self.close_connection = True
                    return "stopped"
                if behaviour.fault is Fault.DROP:
                    self._drop()
                    return Fault.DROP.value
                self._send(*server._respond(behaviour, body), behaviour.fault.value)
                return behaviour.fault.value

            def _read_body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length > 0 else b""

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.wfile.flush()
                    self.connection.shutdown(2)  # socket.SHUT_RDWR: no response at all
                except OSError:
                    pass

            def _send(
                self, status: int, body: Any, headers: dict[str, str], outcome: str | None = None
            ) -> None:
                if isinstance(body, bytes | str):
                    payload = body.encode() if isinstance(body, str) else body
                    ctype = "text/plain; charset=utf-8"
                else:
                    payload, ctype = json.dumps(body).encode(), "application/json"
                if outcome is not None:
                    self._record(outcome)
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


def _web_requested(body: dict[str, Any]) -> bool:
    plugins = body.get("plugins")
    web = isinstance(plugins, list) and any(
        isinstance(p, dict) and p.get("id") == "web" for p in plugins
    )
    return web or str(body.get("model") or "").endswith(":online")


def _seconds(value: float) -> str:
    """Retry-After as delta-seconds: an integer when whole, else up to millisecond precision."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


__all__ = [
    "CHAT_COMPLETIONS_PATH",
    "Behaviour",
    "Fault",
    "FakeOpenRouterServer",
    "RecordedRequest",
    "answer_for",
    "question_of",
]
