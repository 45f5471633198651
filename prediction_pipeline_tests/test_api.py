"""The HTTP API against a real uvicorn server on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

from prediction_pipeline.clients.market_sources import SyntheticSource
from prediction_pipeline.core.digests import make_unsubscribe_token
from prediction_pipeline.services import api_access, on_demand
from prediction_pipeline.services.forecasters import BuiltinForecaster
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import migrate
from prediction_pipeline.store import users as user_store
from prediction_pipeline.store.db import make_engine
from prediction_pipeline.store.tables import api_keys, credit_ledger, prediction_requests
from prediction_pipeline_tests.child_processes import CONTEXT, post_prediction_with_key
from prediction_pipeline_tests.fakes.api_server import ApiServer

USER = "ada@example.com"
MODEL = "baseline/market"


@pytest.fixture
def market(engine) -> str:
    day = dt.datetime.now(dt.UTC).date()
    batch = SyntheticSource(size=20).fetch_active(day)
    with engine.begin() as conn:
        market_store.ingest_markets(conn, batch.markets, day)
        return conn.scalar(sa.text("SELECT source_id FROM markets ORDER BY id LIMIT 1"))


@pytest.fixture
def api(engine):
    with ApiServer(engine, rate_per_minute=5) as server:
        yield server


@pytest.fixture
def key(engine) -> str:
    return api_access.create_key(engine, "web")


@pytest.fixture
def client(api, key):
    with httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def _debits(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).where(credit_ledger.c.reason == "debit"))


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readyz_on_a_database_not_upgraded(empty_database_url):
    engine = make_engine(empty_database_url)
    migrate.upgrade(engine, "0005")
    try:
        with ApiServer(engine) as server:
            answer = httpx.get(f"{server.base_url}/readyz")
            assert answer.status_code == 503
            assert "prediction-pipeline db upgrade" in answer.json()["reason"]
            assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    finally:
        engine.dispose()


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer"])
def test_every_v1_call_needs_a_valid_key(api, header, market):
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("POST", "/v1/predictions"),
        ("GET", "/v1/predictions/x"),
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions/x"),
        ("POST", "/v1/credits"),
    ]:
        answer = httpx.request(
            method, api.base_url + path, headers=headers, json={"user": USER, "amount": 1}
        )
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_a_revoked_key_is_refused(engine, client, key):
    assert client.post("/v1/credits", json={"user": USER, "amount": 1}).status_code == 200
    assert api_access.revoke_key(engine, "web") == 1
    assert client.post("/v1/credits", json={"user": USER, "amount": 1}).status_code == 401


def test_only_a_hash_of_the_key_is_stored(engine, key):
    with engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(sa.select(api_keys)) for v in row)
    assert key not in stored and key[12:] not in stored


def test_prediction_lifecycle_and_status(engine, client, market):
    client.post("/v1/credits", json={"user": USER, "amount": 3})
    answer = client.post("/v1/predictions", json={"market": market, "model": MODEL, "user": USER})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "queued" and body["status_url"] == f"/v1/predictions/{body['id']}"
    status = client.get(body["status_url"]).json()
    assert status["status"] == "queued" and status["prediction"] is None
    assert status["model"] == MODEL and status["credits_charged"] == 1
    assert client.get("/v1/predictions/no-such-id").status_code == 404
    assert client.get(f"/v1/sessions/{body['id']}").status_code == 404


def test_session_402_when_credits_do_not_cover_it(engine, client, market):
    client.post("/v1/credits", json={"user": USER, "amount": 1})
    body = {"market": market, "models": [MODEL, "baseline/momentum"], "user": USER}
    answer = client.post("/v1/sessions", json=body)
    assert answer.status_code == 402
    assert answer.json() | {"message": ""} == {
        "error": "insufficient_credits",
        "message": "",
        "balance": 1,
        "required": 2,
    }
    client.post("/v1/credits", json={"user": USER, "amount": 1})
    created = client.post("/v1/sessions", json=body)
    assert created.status_code == 202
    session = client.get(created.json()["status_url"]).json()
    assert [m["model"] for m in session["models"]] == [MODEL, "baseline/momentum"]
    assert session["credits_charged"] == 2 and session["status"] == "queued"


def test_a_retried_post_returns_the_first_answer_and_charges_once(engine, client, market):
    headers = {"Idempotency-Key": "click-1"}
    first = client.post("/v1/credits", json={"user": USER, "amount": 5}, headers=headers)
    again = client.post("/v1/credits", json={"user": USER, "amount": 5}, headers=headers)
    assert first.json() == again.json() == {"user": USER, "balance": 5}
    body = {"market": market, "models": [MODEL], "user": USER}
    reused = client.post("/v1/sessions", json=body, headers=headers)  # key of another call
    assert reused.status_code == 409
    headers = {"Idempotency-Key": "click-2"}
    answers = [client.post("/v1/sessions", json=body, headers=headers) for _ in range(3)]
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert _debits(engine) == 1
    other = client.post("/v1/sessions", json=body | {"web_search": True}, headers=headers)
    assert other.status_code == 409 and other.json()["error"] == "idempotency_conflict"


def test_concurrent_retries_from_processes_debit_once(engine, api, key, market):
    on_demand.grant(engine, USER, 5)
    body = {"market": market, "model": MODEL, "user": USER}
    ctx = CONTEXT
    out = ctx.Queue()
    procs = [
        ctx.Process(target=post_prediction_with_key, args=(api.base_url, key, body, out))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert {status for status, _ in results} == {202}
    assert len({item for _, item in results}) == 1
    assert _debits(engine) == 1
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(prediction_requests)) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"market": "x", "model": MODEL}, "user"),
        ({"market": "nope", "model": MODEL, "user": USER}, "market"),
        ({"model": MODEL, "user": USER}, "market"),
        ({"market": "M", "model": "no/such", "user": USER}, "model"),
        ({"market": "M", "model": MODEL, "user": USER, "web_search": "yes"}, "web_search"),
        ({"market": "M", "model": MODEL, "user": USER, "extra": 1}, "extra"),
        ({"market": "M", "model": 5, "user": USER}, "model"),
    ],
)
def test_bad_prediction_bodies_name_the_field(engine, client, market, body, field):
    on_demand.grant(engine, USER, 5)
    body = {k: (market if v == "M" else v) for k, v in body.items()}
    answer = client.post("/v1/predictions", json=body)
    assert answer.status_code == 422, answer.text
    payload = answer.json()
    assert payload["error"] == "invalid_request"
    assert field in [f["field"] for f in payload["fields"]], payload
    assert _debits(engine) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"user": USER, "amount": -5},
        {"user": USER, "amount": 0},
        {"user": USER, "amount": 1.5},
        {"user": USER, "amount": "3"},
        {"user": USER, "amount": 2**31},
        {"user": USER, "amount": True},
        {"user": "not an email", "amount": 1},
    ],
)
def test_bad_credit_amounts_are_refused(engine, client, body):
    answer = client.post("/v1/credits", json=body)
    assert answer.status_code == 422, answer.text
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(credit_ledger)) == 0


def test_malformed_json_and_session_model_list(engine, client, market):
    on_demand.grant(engine, USER, 5)
    answer = client.post(
        "/v1/credits", content=b'{"user": ', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_request"
    answer = client.post("/v1/sessions", json={"market": market, "models": MODEL, "user": USER})
    assert answer.status_code == 422
    assert "models" in [f["field"] for f in answer.json()["fields"]]
    body = {"market": market, "models": [MODEL, "no/such"], "user": USER}
    answer = client.post("/v1/sessions", json=body)
    assert answer.status_code == 422
    assert [f["field"] for f in answer.json()["fields"]] == ["models"]


def test_bodies_over_64_kib_get_413(api, key):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    big = json.dumps({"user": USER, "amount": 1, "reason": "x" * 70_000}).encode()
    answer = httpx.post(f"{api.base_url}/v1/credits", content=big, headers=headers)
    assert answer.status_code == 413

    def chunks():  # no Content-Length: the limit still holds
        for _ in range(80):
            yield b" " * 1024

    answer = httpx.post(f"{api.base_url}/v1/credits", content=chunks(), headers=headers)
    assert answer.status_code == 413


def test_per_user_rate_limit_answers_429_with_retry_after(engine, client, market):
    on_demand.grant(engine, USER, 20)
    body = {"market": market, "model": MODEL, "user": USER}
    statuses = [client.post("/v1/predictions", json=body).status_code for _ in range(5)]
    assert statuses == [202] * 5
    limited = client.post("/v1/predictions", json=body)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    assert _debits(engine) == 5
    on_demand.grant(engine, "bob@example.com", 2)  # another user is not limited
    assert (
        client.post("/v1/predictions", json=body | {"user": "bob@example.com"}).status_code == 202
    )


def test_openapi_is_served(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/predictions", "/v1/sessions", "/v1/credits", "/readyz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_the_key_never_appears_in_the_server_log(engine, market, caplog):
    key = api_access.create_key(engine, "logged")
    with ApiServer(engine) as server, caplog.at_level("DEBUG"):
        httpx.get(f"{server.base_url}/v1/predictions/x", headers={"Authorization": f"Bearer {key}"})
    assert key not in caplog.text


def _read_events(base_url: str, path: str, key: str, last_event_id: str | None = None):
    """(id, event, data) of every event until the stream ends."""
    headers = {"Authorization": f"Bearer {key}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events, current = [], {}
    with httpx.stream("GET", base_url + path, headers=headers, timeout=60) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if not line:
                if "event" in current:
                    events.append(
                        (current.get("id"), current["event"], json.loads(current["data"]))
                    )
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                current[field] = value.removeprefix(" ")
    return events


def _run_session(engine, session_id: str) -> None:
    def build(spec):
        return BuiltinForecaster(spec.slug)

    models, _ = on_demand.research_session(engine, build, session_id, "run-1")
    for model in models:
        on_demand.predict_session_model(engine, build, (), session_id, model, "run-1")
    on_demand.settle_session(engine, session_id)


def test_session_events_from_queued_to_settled_and_resumed(engine, api, key, market):
    on_demand.grant(engine, USER, 2)
    session_id = on_demand.create_session(engine, market, [MODEL, "baseline/momentum"], USER)
    path = f"/v1/sessions/{session_id}/events"
    with ThreadPoolExecutor(1) as pool:
        live = pool.submit(_read_events, api.base_url, path, key)
        time.sleep(0.5)  # the stream is open before the work starts
        _run_session(engine, session_id)
        events = live.result(timeout=60)
    names = [name for _, name, _ in events]
    assert names[0] == "queued" and names[1] == "running"
    assert [d["model"] for _, n, d in events if n == "model" and d["status"] != "running"] == [
        MODEL,
        "baseline/momentum",
    ]
    assert names[-2:] == ["settled", "end"]
    assert events[-1][2]["status"] == "completed" and len(events[-1][2]["models"]) == 2
    ids = [int(i) for i, name, _ in events if name != "end"]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # A client that dropped after the second event gets the rest, and nothing twice.
    resumed = _read_events(api.base_url, path, key, last_event_id=events[1][0])
    assert resumed[:-1] == events[2:-1]
    assert resumed[-1][1] == "end"
    # After the end, a reconnect hears the final state again at once.
    again = _read_events(api.base_url, path, key, last_event_id=events[-1][0])
    assert [name for _, name, _ in again] == ["end"]


def test_prediction_events_end_with_the_final_state(engine, api, key, market):
    on_demand.grant(engine, USER, 1)
    request_id = on_demand.request_prediction(engine, market, MODEL, user_email=USER)
    on_demand.fulfil_request(engine, lambda spec: BuiltinForecaster(spec.slug), (), request_id, "r")
    events = _read_events(api.base_url, f"/v1/predictions/{request_id}/events", key)
    assert [name for _, name, _ in events] == ["queued", "running", "succeeded", "end"]
    final = events[-1][2]
    assert final["status"] == "succeeded" and 0 <= final["prediction"]["probability"] <= 1
    missing = httpx.get(
        f"{api.base_url}/v1/predictions/nope/events", headers={"Authorization": f"Bearer {key}"}
    )
    assert missing.status_code == 404


SECRET = "test-unsubscribe-secret"


@pytest.fixture
def unsub_api(engine):
    with ApiServer(engine, unsubscribe_secret=SECRET) as server:
        yield server


def _subscribed(engine, email: str) -> bool:
    with engine.connect() as conn:
        return user_store.get_user(conn, email).digest_opt_in


def test_one_click_unsubscribe(engine, unsub_api):
    with engine.begin() as conn:
        user, _ = user_store.add_user(conn, USER)
        other, _ = user_store.add_user(conn, "bob@example.com")
    token = make_unsubscribe_token(user.id, SECRET, email=USER)
    url = f"{unsub_api.base_url}/unsubscribe"
    page = httpx.get(url, params={"token": token})
    assert page.status_code == 200 and "<button" in page.text and USER in page.text
    assert _subscribed(engine, USER)  # a prefetching link scanner unsubscribes nobody
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    forged = make_unsubscribe_token(other.id, SECRET, email=USER)  # another user's id
    wrong_key = make_unsubscribe_token(user.id, "guessed", email=USER)
    for bad in (tampered, forged, wrong_key, "v1.1.abc", "garbage"):
        for method in ("GET", "POST"):
            answer = httpx.request(method, url, params={"token": bad})
            assert answer.status_code == 400 and "not valid" in answer.text, (bad, method)
    assert _subscribed(engine, USER) and _subscribed(engine, "bob@example.com")
    body = {"List-Unsubscribe": "One-Click"}
    for _ in range(2):  # idempotent
        done = httpx.post(url, params={"token": token}, data=body)
        assert done.status_code == 200 and "no more digests" in done.text
        assert not _subscribed(engine, USER)
    assert _subscribed(engine, "bob@example.com")


def test_digest_links_point_at_the_api(engine):
    from prediction_pipeline.core.digests import DEFAULT_PUBLIC_URL, unsubscribe_url

    url = unsubscribe_url(DEFAULT_PUBLIC_URL, 1, SECRET, email=USER)
    assert url.startswith("http://localhost:8000/unsubscribe?token=")  # `make api`
