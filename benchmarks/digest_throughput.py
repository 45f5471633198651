"""Digest fan-out throughput: N users x 20 watched markets, rendered and handed to a local SMTP
sink at a set rate, against a naive baseline in the same run.

Setup: a throwaway SQLite app database with a synthetic market universe seen on two days (the
day before and the digest day), both built-in models' forecasts on the digest day, N users each
watching 20 random open markets, and yesterday's digest marked sent for everyone (so every
digest reports changes since then). The SMTP sink is aiosmtpd in its own process (so it does
not share a core with the sender); it records the Message-ID of everything it accepts.

- new: the production path, unchanged: `deliver_digests` (chunks of `--chunk-size` users,
  `--connections` persistent SMTP connections, the `--rate` cap, the exactly-once ledger
  written before and after every send). Then the same day again, which must send nothing.
- naive: what one would write first: load and render every user's digest up front (no
  chunking), then send them one after the other, one SMTP connection per message, no ledger,
  no cap. Run on a sample (`--naive-users`): its rate does not depend on the sample size, and
  its memory grows with it (reported per 1,000 users).

Each approach runs in a child process of its own, so its peak memory (VmHWM, minus the
resident size after imports) is its own.

    .venv/bin/python -m benchmarks.digest_throughput [--users 10000 --rate 100
        --connections 8 --chunk-size 500 --latency-ms 10 --naive-users 300 --seed 7]

Prints a table and writes benchmarks/results/digest_throughput.json (--users 100000 for the
full-size run; --output to write elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import smtplib
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import git, peak_rss_mb, rss_now_mb, text_table

RESULTS_PATH = Path(__file__).parent / "results" / "digest_throughput.json"
DAY = dt.date(2026, 6, 2)  # any day after the synthetic epoch; fixed for repeatability
SECRET = "benchmark-secret"
MODELS = ("baseline/market", "baseline/momentum")
TARGET_SHARE = 0.95


@dataclass
class Settings:
    users: int = 10_000
    markets_per_user: int = 20
    rate: float = 100.0
    connections: int = 8
    chunk_size: int = 500
    latency_ms: float = 10.0
    naive_users: int = 300
    seed: int = 7


@dataclass
class Outcome:
    approach: str
    users: int
    sent: int
    received: int  # by the sink
    duplicates: int  # received minus distinct Message-IDs
    wall_s: float
    send_s: float  # first to last handover
    messages_per_s: float
    cap: float | None
    share_of_cap: float | None
    peak_rss_mb: float  # growth of the resident set over the run
    rss_mb_per_1k_users: float
    connections: int
    extra: dict[str, Any]


# -- setup (parent) ---------------------------------------------------------------------


def build_database(url: str, settings: Settings) -> dict[str, Any]:
    import sqlalchemy as sa

    from prediction_pipeline.core.baselines import BASELINES
    from prediction_pipeline.core.forecast import MarketContext
    from prediction_pipeline.core.synthetic import SyntheticUniverse
    from prediction_pipeline.store import migrate
    from prediction_pipeline.store import predictions as prediction_store
    from prediction_pipeline.store.db import make_engine
    from prediction_pipeline.store.markets import ingest_markets
    from prediction_pipeline.store.tables import digest_deliveries, users, watchlist_items

    started = time.perf_counter()
    engine = make_engine(url)
    migrate.upgrade(engine)
    universe = SyntheticUniverse(size=400, seed=settings.seed)
    yesterday = DAY - dt.timedelta(days=1)
    with engine.begin() as conn:
        ingest_markets(conn, universe.active_markets(yesterday), yesterday)
        ingest_markets(conn, universe.active_markets(DAY), DAY)
    with engine.connect() as conn:
        candidates = prediction_store.candidate_markets(conn, DAY)
    open_ids = sorted(r.id for r in candidates)
    with engine.begin() as conn:  # both built-in baselines forecast every open market today
        history = prediction_store.price_history(conn, open_ids, DAY)
        for row in candidates:
            ctx = MarketContext(
                market_id=row.id,
                source_id=row.source_id,
                question=row.question,
                day=DAY,
                market_price=row.yes_price,
                price_history=tuple(history.get(row.id, ())),
            )
            for model in MODELS:
                prediction_store.store_prediction(conn, ctx, model, BASELINES[model](ctx))

    rng = random.Random(settings.seed)
    now = dt.datetime.now(dt.UTC)
    added = dt.datetime.combine(DAY - dt.timedelta(days=10), dt.time(9), tzinfo=dt.UTC)
    sent_at = dt.datetime.combine(yesterday, dt.time(8), tzinfo=dt.UTC)
    per_user = min(settings.markets_per_user, len(open_ids))
    batch = 20_000
    with engine.begin() as conn:
        for start in range(1, settings.users + 1, batch):
            ids = range(start, min(start + batch, settings.users + 1))
            conn.execute(
                users.insert(),
                [
                    {
                        "id": i,
                        "email": f"user{i}@bench.example",
                        "name": f"Bench User {i}",
                        "digest_opt_in": True,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                watchlist_items.insert(),
                [
                    {"user_id": i, "market_id": m, "added_at": added}
                    for i in ids
                    for m in rng.sample(open_ids, per_user)
                ],
            )
            conn.execute(
                digest_deliveries.insert(),
                [
                    {
                        "user_id": i,
                        "day": yesterday,
                        "status": "sent",
                        "attempts": 1,
                        "sent_at": sent_at,
                        "created_at": sent_at,
                        "updated_at": sent_at,
                    }
                    for i in ids
                ],
            )
    with engine.connect() as conn:
        watched = conn.scalar(sa.select(sa.func.count()).select_from(watchlist_items))
    engine.dispose()
    return {
        "open_markets": len(open_ids),
        "watchlist_items": watched,
        "setup_s": round(time.perf_counter() - started, 1),
    }


class Sink:
    """The aiosmtpd sink in a process of its own."""

    def __init__(self, tmp: Path, name: str, latency_ms: float) -> None:
        self.ids_file = tmp / f"sink-{name}.ids"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prediction_pipeline_tests.fakes.smtp_server",
                "--ids-file",
                str(self.ids_file),
                "--latency-ms",
                str(latency_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        line = self.process.stdout.readline().strip()
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"SMTP sink did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> Counter[bytes]:
        self.process.terminate()
        self.process.wait(timeout=60)
        data = self.ids_file.read_bytes() if self.ids_file.exists() else b""
        return Counter(line for line in data.split(b"\n") if line)


def run_child(approach: str, url: str, port: int, settings: Settings, users: int) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.digest_throughput",
            "--child",
            approach,
            "--database-url",
            url,
            "--smtp-port",
            str(port),
            "--child-users",
            str(users),
            *settings_args(settings),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{approach} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def settings_args(s: Settings) -> list[str]:
    return [
        "--users",
        str(s.users),
        "--markets-per-user",
        str(s.markets_per_user),
        "--rate",
        str(s.rate),
        "--connections",
        str(s.connections),
        "--chunk-size",
        str(s.chunk_size),
        "--latency-ms",
        str(s.latency_ms),
        "--naive-users",
        str(s.naive_users),
        "--seed",
        str(s.seed),
    ]


# -- the approaches (children) ----------------------------------------------------------


def child_new(url: str, port: int, settings: Settings) -> dict:
    from prediction_pipeline.clients.email import SmtpTransport
    from prediction_pipeline.core.digests import DigestRenderer
    from prediction_pipeline.services.digest_delivery import deliver_digests
    from prediction_pipeline.services.digest_settings import DeliverySettings
    from prediction_pipeline.store.db import make_engine

    engine = make_engine(url)
    transport = SmtpTransport.from_url(f"smtp://127.0.0.1:{port}?starttls=false")
    delivery = DeliverySettings(
        chunk_size=settings.chunk_size,
        max_messages_per_second=settings.rate,
        connections=settings.connections,
    )
    base = rss_now_mb()
    started = time.perf_counter()
    report = deliver_digests(engine, transport, DigestRenderer(SECRET), DAY, delivery)
    wall = time.perf_counter() - started
    peak = peak_rss_mb() - base
    rerun_started = time.perf_counter()
    rerun = deliver_digests(engine, transport, DigestRenderer(SECRET), DAY, delivery)
    rerun_wall = time.perf_counter() - rerun_started
    return {
        "sent": report.sent,
        "wall_s": wall,
        "send_s": report.send_window_s,
        "attempts": report.attempts,
        "failed": report.failed,
        "skipped": report.skipped,
        "connections": report.connections_opened,
        "peak_rss_mb": peak,
        "rerun": {
            "sent": rerun.sent,
            "skipped_already_sent": rerun.skipped_already_sent,
            "wall_s": round(rerun_wall, 2),
        },
    }


def child_naive(url: str, port: int, settings: Settings, users: int) -> dict:
    """Everything loaded and rendered up front, then one connection per message."""
    from prediction_pipeline.core import digests as core
    from prediction_pipeline.store import digest_content, digest_ledger
    from prediction_pipeline.store.db import make_engine

    engine = make_engine(url)
    renderer = core.DigestRenderer(SECRET)
    base = rss_now_mb()
    started = time.perf_counter()
    with engine.connect() as conn:
        people = digest_content.watching_users(conn, 0, users)
        ids = [u.user_id for u in people]
        previous = digest_ledger.previous_digests(conn, DAY, ids)
        items = digest_content.watch_items(conn, ids)
        markets = sorted({i.market_id for lst in items.values() for i in lst})
        states = digest_content.market_states(conn, markets, DAY)
        forecasts = digest_content.latest_forecasts(conn, markets, DAY)
        scores = digest_content.model_scores(conn, markets)
        baselines = {
            (m, DAY - dt.timedelta(days=1)): p
            for m, p in digest_content.prices_as_of(
                conn, markets, DAY - dt.timedelta(days=1)
            ).items()
        }
    messages = []
    for user in people:
        digest = core.build_digest(
            core.Recipient(user.user_id, user.email, user.name),
            DAY,
            previous.get(user.user_id),
            items.get(user.user_id, ()),
            states,
            baselines,
            forecasts,
            scores,
        )
        if digest.has_news:
            messages.append((user.email, renderer.message(digest).as_bytes()))
    rendered = time.perf_counter()
    for address, data in messages:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail("digest@localhost", [address], data)
    done = time.perf_counter()
    return {
        "sent": len(messages),
        "wall_s": done - started,
        "send_s": done - rendered,
        "render_s": rendered - started,
        "attempts": len(messages),
        "failed": 0,
        "skipped": len(people) - len(messages),
        "connections": len(messages),
        "peak_rss_mb": peak_rss_mb() - base,
    }


# -- report -----------------------------------------------------------------------------


def outcome(
    approach: str, users: int, child: dict, received: Counter, cap: float | None
) -> Outcome:
    rate = child["attempts"] / child["send_s"] if child["send_s"] > 0 else 0.0
    extra = {k: v for k, v in child.items() if k not in ("sent", "wall_s", "send_s", "peak_rss_mb")}
    return Outcome(
        approach=approach,
        users=users,
        sent=child["sent"],
        received=sum(received.values()),
        duplicates=sum(received.values()) - len(received),
        wall_s=round(child["wall_s"], 2),
        send_s=round(child["send_s"], 2),
        messages_per_s=round(rate, 2),
        cap=cap,
        share_of_cap=round(rate / cap, 4) if cap else None,
        peak_rss_mb=round(child["peak_rss_mb"], 1),
        rss_mb_per_1k_users=round(child["peak_rss_mb"] / users * 1000, 2),
        connections=child["connections"],
        extra=extra,
    )


def table(outcomes: list[Outcome]) -> str:
    header = (
        "approach",
        "users",
        "sent",
        "received",
        "dupes",
        "wall s",
        "send s",
        "msg/s",
        "cap",
        "of cap",
        "peak MB",
        "MB/1k users",
        "conns",
    )
    rows = [
        (
            o.approach,
            str(o.users),
            str(o.sent),
            str(o.received),
            str(o.duplicates),
            f"{o.wall_s:.1f}",
            f"{o.send_s:.1f}",
            f"{o.messages_per_s:.1f}",
            f"{o.cap:g}" if o.cap else "none",
            f"{o.share_of_cap:.1%}" if o.share_of_cap is not None else "-",
            f"{o.peak_rss_mb:.1f}",
            f"{o.rss_mb_per_1k_users:.2f}",
            str(o.connections),
        )
        for o in outcomes
    ]
    return text_table(header, rows)


def run(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2)
    naive_users = min(settings.naive_users, settings.users)
    with tempfile.TemporaryDirectory(prefix="bench-digests-") as tmp:
        tmp_path = Path(tmp)
        url = f"sqlite:///{tmp_path / 'app.db'}"
        print(f"setting up {settings.users:,} users x {settings.markets_per_user} markets ...")
        setup = build_database(url, settings)
        print(f"  done in {setup['setup_s']} s; new path at <= {settings.rate:g} msg/s ...")
        sink = Sink(tmp_path, "new", settings.latency_ms)
        try:
            new_child = run_child("new", url, sink.port, settings, settings.users)
        finally:
            received_new = sink.stop()
        print(f"  naive baseline on {naive_users:,} users ...")
        # The naive path keeps no ledger: it reads the same users and market data.
        sink = Sink(tmp_path, "naive", settings.latency_ms)
        try:
            naive_child = run_child("naive", url, sink.port, settings, naive_users)
        finally:
            received_naive = sink.stop()
    new = outcome("new (deliver_digests)", settings.users, new_child, received_new, settings.rate)
    naive = outcome(
        "naive (render all, 1 conn/msg)", naive_users, naive_child, received_naive, None
    )
    return {
        "benchmark": "digest_throughput",
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.digest_throughput " + " ".join(sys.argv[1:]),
        "settings": asdict(settings),
        "setup": setup,
        "environment": {
            "git_commit": git("rev-parse", "--short", "HEAD"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1m_before": load_before,
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        },
        "new": asdict(new),
        "naive": asdict(naive),
        "ratios": {
            "messages_per_s_new_over_naive": round(new.messages_per_s / naive.messages_per_s, 2)
            if naive.messages_per_s
            else None,
            # The naive run holds every rendered message: its memory grows with the users
            # (measured per user on its sample, projected to the full population); the new
            # path holds a chunk at a time.
            "naive_peak_mb_projected": round(naive.rss_mb_per_1k_users * settings.users / 1000),
            "peak_memory_naive_projected_over_new": round(
                naive.rss_mb_per_1k_users * settings.users / 1000 / new.peak_rss_mb, 1
            )
            if new.peak_rss_mb > 0
            else None,
        },
        "target": {
            "share_of_cap_min": TARGET_SHARE,
            "share_of_cap": new.share_of_cap,
            "duplicates": new.duplicates,
            "rerun_sent": new.extra["rerun"]["sent"],
            "met": (new.share_of_cap or 0) >= TARGET_SHARE
            and new.duplicates == 0
            and new.received == new.sent
            and new.extra["rerun"]["sent"] == 0,
        },
        "total_wall_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Settings()
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--markets-per-user", type=int, default=defaults.markets_per_user)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="Cap, messages/s.")
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--chunk-size", type=int, default=defaults.chunk_size)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=defaults.latency_ms,
        help="The sink's delay before each reply: a remote server's round trip (0: bare loopback).",
    )
    parser.add_argument("--naive-users", type=int, default=defaults.naive_users)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    parser.add_argument("--child", choices=("new", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--smtp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-users", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = Settings(
        users=args.users,
        markets_per_user=args.markets_per_user,
        rate=args.rate,
        connections=args.connections,
        chunk_size=args.chunk_size,
        latency_ms=args.latency_ms,
        naive_users=args.naive_users,
        seed=args.seed,
    )
    if args.child == "new":
        print(json.dumps(child_new(args.database_url, args.smtp_port, settings)))
        return
    if args.child == "naive":
        print(
            json.dumps(child_naive(args.database_url, args.smtp_port, settings, args.child_users))
        )
        return
    result = run(settings)
    print()
    print(table([Outcome(**result["new"]), Outcome(**result["naive"])]))
    ratios, target = result["ratios"], result["target"]
    rerun = result["new"]["extra"]["rerun"]
    print(
        f"\nnew vs naive: {ratios['messages_per_s_new_over_naive']}x the messages per second; "
        f"peak memory {result['new']['peak_rss_mb']:.0f} MB for {settings.users:,} users, "
        f"where the naive path would need ~{ratios['naive_peak_mb_projected']:,} MB "
        f"({ratios['peak_memory_naive_projected_over_new']}x)"
    )
    print(
        f"new: {result['new']['share_of_cap']:.1%} of the {settings.rate:g} msg/s cap, "
        f"{result['new']['duplicates']} duplicates; re-run of the day sent {rerun['sent']} "
        f"({rerun['skipped_already_sent']:,} already sent) in {rerun['wall_s']} s"
    )
    print(f"target met: {target['met']}  (total {result['total_wall_s']} s)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
