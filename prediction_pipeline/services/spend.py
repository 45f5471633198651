"""The spend guard a forecaster's provider calls go through: reserve before, settle after.

One guard per (model, day, cap); it implements the client's `SpendHook`, so every call of
`OpenRouterClient.complete` (forecasts, their re-asks, the session's research) reserves an
estimate against the day's cap in the app database before it is sent and records what it
cost afterwards (see store.spend for the rules and the guarantee).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from dataclasses import dataclass

import sqlalchemy as sa

from prediction_pipeline.store import spend as spend_store


class SpendCapReached(RuntimeError):
    """The model's spend cap for the day is reached: the call was not sent."""

    cost_usd = 0.0


@dataclass
class SpendGuard:
    engine: sa.Engine
    model: str
    day: dt.date
    cap_usd: float | None
    purpose: str = "forecast"
    run_id: str | None = None
    estimate_usd: float | None = None  # None: the dearest call seen x (1 + margin)
    poll_initial: float = 0.05  # waiting for calls in flight to settle: first pause, seconds
    poll_max: float = 1.0

    async def reserve(self, *, web_search: bool) -> spend_store.Ticket:
        """A reservation for one call; waits while calls in flight hold the headroom
        (they settle within a call's time, or expire); `SpendCapReached` when the cap is."""
        pause = self.poll_initial
        while True:
            # In a thread: a database wait must not stall the other calls of the event loop.
            admission, ticket = await asyncio.to_thread(self._reserve_once, web_search)
            if ticket is not None:
                return ticket
            if admission is spend_store.Admission.EXHAUSTED:
                raise SpendCapReached(
                    f"spend cap {self.cap_usd} USD of {self.model} reached for {self.day}"
                )
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 2, self.poll_max)

    async def settle(self, ticket: spend_store.Ticket, cost_usd: float | None) -> None:
        await asyncio.to_thread(self._in_transaction, spend_store.settle, ticket, cost_usd)

    async def release(self, ticket: spend_store.Ticket) -> None:
        await asyncio.to_thread(self._in_transaction, spend_store.release, ticket)

    def _reserve_once(
        self, web_search: bool
    ) -> tuple[spend_store.Admission, spend_store.Ticket | None]:
        with self.engine.begin() as conn:
            return spend_store.reserve(
                conn,
                self.model,
                self.day,
                self.cap_usd,
                web_search=web_search,
                purpose=self.purpose,
                run_id=self.run_id,
                estimate_usd=self.estimate_usd,
            )

    def _in_transaction(self, fn, *args) -> None:
        with self.engine.begin() as conn:
            fn(conn, *args)
