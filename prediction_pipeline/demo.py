"""`make demo`: run the daily pipeline on the offline defaults into $DAGSTER_HOME.

Runs go through the code location's own jobs on the real instance, executed in this process
but created with the code location's origin (see `launch`), so they show up in the UI
afterwards: Runs, Assets, each job's Runs tab and the Overview timeline. Two weeks of history
are materialized first (markets and the built-in models' predictions), so the momentum
baseline has a trend to follow, deltas have predictions to compare, and markets resolve for
the leaderboard.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable, Mapping

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import execute_run
from dagster._core.execution.job_execution_result import JobExecutionResult
from dagster._core.remote_origin import (
    ManagedGrpcPythonEnvCodeLocationOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from prediction_pipeline.core.markets import MarketStatus
from prediction_pipeline.definitions import defs
from prediction_pipeline.partitions import add_model_partitions
from prediction_pipeline.store import models as model_store
from prediction_pipeline.store import scoring as score_store

# Keep the demo's console readable: the UI has the full event log.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

# The code location as workspace.yaml and pyproject.toml ([tool.dagster]) name it.
DEFINITIONS_MODULE = "prediction_pipeline.definitions"
LOCATION_NAME = "prediction_pipeline"


def repository_origin() -> RemoteRepositoryOrigin:
    """Where the UI finds this code location's jobs. A run created with it carries the tag
    `.dagster/repository` = `<repository>@<location>`, which the UI's job pages filter by
    (`RunsFilter(job_name=..., tags={".dagster/repository": ...})`): runs of
    `execute_in_process` have no origin and show only in the global Runs list."""
    target = LoadableTargetOrigin(
        executable_path=sys.executable,
        module_name=DEFINITIONS_MODULE,
        working_directory=os.getcwd(),
    )
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, location_name=LOCATION_NAME)
    return RemoteRepositoryOrigin(location, defs.get_repository_def().name)


def launch(
    instance: dg.DagsterInstance,
    job_name: str,
    partition_key: str | None = None,
    run_config: Mapping | None = None,
) -> JobExecutionResult:
    """Create a run of `job_name` as the UI would (the location's origin, the partition's tags)
    and execute it here, in this process (the location's executor is in-process)."""
    recon_job = ReconstructableRepository.for_module(
        DEFINITIONS_MODULE, "defs", working_directory=os.getcwd()
    ).get_reconstructable_job(job_name)
    job = defs.resolve_job_def(job_name)
    tags = job.get_tags_for_partition_key(partition_key, None) if partition_key else {}
    run = instance.create_run_for_job(
        job_def=job,
        run_config=run_config,
        tags=tags,
        remote_job_origin=repository_origin().get_job_origin(job_name),
        job_code_origin=recon_job.get_python_origin(),
    )
    return execute_run(recon_job, run, instance, raise_on_error=False)


Echo = Callable[[str], None]


class Demo:
    def __init__(
        self,
        engine,
        today: dt.date,
        history_days: int,
        echo: Echo,
        instance: dg.DagsterInstance | None = None,
    ) -> None:
        self.engine = engine
        self.today = today
        self.days = [today - dt.timedelta(days=n) for n in range(history_days, -1, -1)]
        self.echo = echo
        self.instance = instance or dg.DagsterInstance.get()
        self.ok = True

    def run(self, job: str, partition_key=None) -> JobExecutionResult:
        result = launch(self.instance, job, partition_key, run_config=QUIET)
        if not result.success:
            self.ok = False
            failure = result.get_step_failure_events()
            reason = failure[0].event_specific_data.error.message.strip() if failure else "?"
            self.echo(f"  {job} {partition_key} FAILED: {reason.splitlines()[0][:160]}")
        return result

    def markets(self) -> None:
        self.echo(f"markets: {len(self.days)} days up to {self.today} ...")
        for day in self.days:
            result = self.run("markets_job", day.isoformat())
        meta = _metadata(result, "markets")
        checks = result.get_asset_check_evaluations()
        self.echo(
            f"  {self.today}: {meta.get('markets')} markets ({meta.get('new')} new, "
            f"{meta.get('resolved')} resolved today), checks "
            f"{sum(c.passed for c in checks)}/{len(checks)} passed"
        )

    def predictions(self) -> None:
        with self.engine.connect() as conn:
            enabled = [m.slug for m in model_store.list_models(conn, enabled_only=True)]
        add_model_partitions(self.instance, enabled)
        self.echo(f"predictions: {len(enabled)} enabled models x {len(self.days)} days ...")
        for slug in enabled:
            for day in self.days:
                key = dg.MultiPartitionKey({"day": day.isoformat(), "model": slug})
                result = self.run("predictions_job", key)
            if result.success:
                meta = _metadata(result, "predictions")
                self.echo(
                    f"  {slug:<20} {self.today}: predicted={meta['predicted']} "
                    f"already={meta['skipped_existing']} failed={meta['failed']} "
                    f"cost=${meta['cost_usd']:.4f} p50={meta['latency_p50_ms']}ms"
                )

    def deltas(self) -> None:
        result = self.run("deltas_job", self.today.isoformat())
        if result.success:
            meta = _metadata(result, "prediction_deltas")
            self.echo(
                f"deltas {self.today}: {meta['deltas']} rows; mean |delta| by model "
                f"{meta['mean_abs_delta_by_model']}"
            )

    def scoring(self) -> None:
        result = self.run("scoring_job")
        if not result.success:
            return
        scores = _metadata(result, "forecast_scores")
        board = _metadata(result, "model_leaderboard")
        self.echo(
            f"scores: {scores['newly_scored']} predictions on resolved markets scored "
            f"({scores['excluded_closed_unresolved']} closed-unresolved and "
            f"{scores['excluded_void']} void excluded)"
        )
        with self.engine.connect() as conn:
            overall = score_store.read_leaderboard(conn, "overall")
        if not overall.empty:
            self.echo(
                "leaderboard (lower Brier is better; skill vs the market price on the same "
                "predictions, 95% interval over markets):"
            )
            for row in overall.itertuples():
                verdict = "beats the market" if row.beats_market else "does not beat the market"
                if row.too_small:
                    verdict = "too few markets to tell"
                self.echo(
                    f"  {row.model:<20} n={row.n:<5} markets={row.n_markets:<4} "
                    f"brier={row.mean_brier:.4f} (market {row.market_brier:.4f}) "
                    f"skill={row.skill_vs_market:+.3f} [{row.skill_lo:+.3f}, {row.skill_hi:+.3f}] "
                    f"ece={row.ece:.3f}: {verdict}"
                )
            self.echo(
                "  calibration chart: in the model_leaderboard asset's metadata in the UI; "
                f"known answers left out: {board.get('excluded_known_answers') or 'none'}"
            )

    def digests(self) -> None:
        result = self.run("digests_job", self.today.isoformat())
        if not result.success:
            return
        meta = _metadata(result, "watchlist_digests")
        self.echo(
            f"digests {self.today}: {meta['users_considered']} users, {meta['sent']} sent, "
            f"{meta['skipped']} skipped ({meta['skipped_opted_out']} opted out, "
            f"{meta['skipped_already_sent']} already sent), {meta['failed']} failed "
            f"-> {meta['transport']}"
        )


# Demo recipients: two subscribed, one who unsubscribed (counted, never mailed).
DEMO_USERS = (
    ("ana@example.com", "Ana Demo", True),
    ("ben@example.com", "Ben Demo", True),
    ("cy@example.com", "Cy Demo (unsubscribed)", False),
)


def seed_demo_users(engine, echo: Echo) -> None:
    """Demo users watching the most traded open markets and a few resolved ones (so the
    digest shows price moves, forecasts, resolutions and scores). Idempotent."""
    from prediction_pipeline.store import markets as market_store
    from prediction_pipeline.store import users as user_store

    # Watched since two weeks ago, so the first digest shows the change since then.
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=14)
    with engine.begin() as conn:
        open_ids = [
            m.id for m in market_store.list_markets(conn, status=MarketStatus.OPEN, limit=8)
        ]
        resolved_ids = [
            m.id for m in market_store.list_markets(conn, status=MarketStatus.RESOLVED, limit=4)
        ]
        user_store.upsert_users(
            conn, [user_store.NewUser(email, name, opt_in) for email, name, opt_in in DEMO_USERS]
        )
        pairs = []
        for n, (email, _, _) in enumerate(DEMO_USERS):
            user = user_store.get_user(conn, email)
            assert user is not None
            watched = open_ids[n : n + 5] + resolved_ids[n : n + 2]
            pairs += [(user.id, market_id) for market_id in watched]
        added = user_store.add_watch_items(conn, pairs, added_at=since)
    echo(
        f"users: {len(DEMO_USERS)} demo users watching {len(set(m for _, m in pairs))} markets "
        f"({added} watchlist items added)"
    )


def _metadata(result: JobExecutionResult, node: str) -> dict:
    events = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in events[0].metadata.items()} if events else {}


def run_demo(
    engine,
    today: dt.date,
    history_days: int,
    echo: Echo,
    instance: dg.DagsterInstance | None = None,
) -> bool:
    demo = Demo(engine, today, history_days, echo, instance)
    demo.markets()
    demo.predictions()
    demo.deltas()
    demo.scoring()
    seed_demo_users(engine, echo)
    demo.digests()
    return demo.ok
