"""Per-model call limits: a steady rate, an in-flight cap, a shared cooldown; inside one
process, and optionally across every run and process through a `SharedBudget`.

`ModelLimiter` is used around each HTTP *attempt* (not around a whole retry loop, so a call
sleeping between retries holds no slot)::

    async with limiter:
        response = await http.post(...)
    if response.status_code == 429:
        limiter.pause(retry_after or default)

Entering it waits, in order, for:

1. the cooldown: `pause(seconds)` (called on a 429, with or without Retry-After) makes every
   caller of the model wait until it ends, so a burst of 429s backs the whole model off rather
   than only the call that saw one;
2. an in-flight slot (`asyncio.Semaphore(max_in_flight)`);
3. a rate token from an `aiolimiter.AsyncLimiter`. If a pause began while it waited for the
   token, the token is given up and it waits for the cooldown again, so callers do not all
   fire together the moment a cooldown ends.

Burst: `AsyncLimiter(max_rate, time_period)` is a leaky bucket of capacity `max_rate` that
drains at `max_rate / time_period` per second. The obvious `AsyncLimiter(rps, 1)` lets a whole
second's quota (`rps` calls) go out at once after an idle spell, which is exactly the spike
that trips a provider's own limiter (often a sliding window or a smaller bucket) and makes the
first wave of a run come back as 429s. We use capacity `burst` (default 1) and period
`burst / rps`: the same long-run rate, but calls are spaced `1/rps` apart from the start. A
larger `burst` trades smoothness for latency when the provider is known to allow it.

All times are the running event loop's clock (`loop.time()`, as aiolimiter uses), so the
limiter can be tested on a virtual-time loop. The asyncio primitives are bound to one event
loop; the limiter rebuilds them when used from a new loop (e.g. one `asyncio.run` per run) and
nothing is in flight.

Across processes (`shared=`): the daily batch, requests and sessions of one model run in
different processes, and the provider's limits hold for all of them together. With a
`SharedBudget` (store/model_limits.py: rows in the app database) step 3 reserves the model's
next send slot instead of a local token, takes one of the model's `max_in_flight` leases
shortly before the slot (polling while all are held) and sleeps until the slot; `pause()`
also pushes the shared slot past the cooldown, so every process backs off. While it holds
leases, the limiter renews them every `shared.renew_every` seconds: leases are short so that
a killed process frees its slots soon, and renewal lets a live call last as long as it needs. The
database calls run in a thread (`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from types import TracebackType
from typing import Protocol

from aiolimiter import AsyncLimiter

log = logging.getLogger(__name__)

# Polling for an in-flight lease held by another process: start fast, back off a little.
LEASE_POLL_FIRST = 0.02
LEASE_POLL_MAX = 0.25


class SharedBudget(Protocol):
    """A model's rate and in-flight budget shared across processes (blocking calls)."""

    renew_every: float  # seconds between two renewals of the leases held
    lease_lead: float  # a lease is taken this long before the send slot (slots are as far)

    def new_holder(self) -> str: ...

    def take_lease(self, holder: str) -> int | None: ...

    def release_lease(self, slot: int, holder: str) -> None: ...

    def renew_leases(self, leases: list[tuple[int, str]]) -> int: ...

    # (slot, now, retry_at) on the budget's clock; slot None: nothing reserved, ask again at
    # retry_at (background callers keep the queue short for on-demand calls).
    def reserve(self) -> tuple[float | None, float, float | None]: ...

    def push_back(self, seconds: float) -> None: ...


class ModelLimiter:
    """Steady rate + in-flight cap + shared cooldown for the calls to one model."""

    def __init__(
        self,
        requests_per_second: float,
        max_in_flight: int,
        *,
        burst: float = 1.0,
        name: str = "",
        shared: SharedBudget | None = None,
    ) -> None:
        if not (math.isfinite(requests_per_second) and requests_per_second > 0):
            raise ValueError("requests_per_second must be a positive number")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if not burst >= 1:
            raise ValueError("burst must be >= 1")
        self.requests_per_second = float(requests_per_second)
        self.max_in_flight = int(max_in_flight)
        self.burst = float(burst)
        self.name = name
        # Observable state (for metadata and tests).
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.acquired = 0
        self.pauses: list[float] = []  # seconds asked by each pause() call
        self._resume_at = 0.0  # loop time before which nobody may acquire
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._rate: AsyncLimiter | None = None
        self.shared = shared
        self._leases: dict[asyncio.Task, tuple[int, str]] = {}  # task -> shared lease
        self._background: set[asyncio.Task] = set()
        self._renewer: asyncio.Task | None = None
        self._clock_offset = math.inf  # local wall clock - the shared budget's clock

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return (
            f"ModelLimiter({label}rps={self.requests_per_second:g}, "
            f"max_in_flight={self.max_in_flight}, in_flight={self.in_flight})"
        )

    # -- state --------------------------------------------------------------------------

    @property
    def pause_count(self) -> int:
        return len(self.pauses)

    @property
    def paused_until(self) -> float:
        """Loop time at which the current cooldown ends (in the past when not paused)."""
        return self._resume_at

    def cooldown_remaining(self) -> float:
        """Seconds left in the current cooldown (0 when not paused or outside a loop)."""
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0
        return max(0.0, self._resume_at - now)

    def pause(self, seconds: float) -> None:
        """Hold every new acquisition for `seconds` from now (extends, never shortens, a
        cooldown already running). Must be called from the event loop's thread."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("pause seconds must be a finite number >= 0")
        self._bind()
        self.pauses.append(float(seconds))
        loop = asyncio.get_running_loop()
        self._resume_at = max(self._resume_at, loop.time() + seconds)
        if self.shared is not None:  # every other process backs off too
            task = loop.create_task(asyncio.to_thread(self.shared.push_back, seconds))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # -- acquisition --------------------------------------------------------------------

    def _bind(self) -> tuple[asyncio.Semaphore, AsyncLimiter]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._semaphore is None or self._rate is None:
            if self.in_flight:
                raise RuntimeError("ModelLimiter used from two event loops at once")
            if self._loop is not None:
                self._resume_at = 0.0  # a new loop has a new clock
            self._loop = loop
            self._semaphore = asyncio.Semaphore(self.max_in_flight)
            self._rate = AsyncLimiter(self.burst, self.burst / self.requests_per_second)
        return self._semaphore, self._rate

    async def _wait_cooldown(self, loop: asyncio.AbstractEventLoop) -> None:
        while (remaining := self._resume_at - loop.time()) > 0:
            await asyncio.sleep(remaining)

    async def acquire(self) -> None:
        semaphore, rate = self._bind()
        loop = asyncio.get_running_loop()
        await self._wait_cooldown(loop)
        await semaphore.acquire()
        try:
            if self.shared is not None:
                await self._acquire_shared(loop)
            else:
                while True:
                    await self._wait_cooldown(loop)
                    await rate.acquire()
                    if self._resume_at <= loop.time():
                        break
                    # A pause began while we waited for the token: give it up, wait again.
        except BaseException:
            semaphore.release()
            raise
        self.in_flight += 1
        self.acquired += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)

    async def _acquire_shared(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reserve the model's next send slot (all processes), take one of the model's
        in-flight leases just before it, then sleep until the slot.

        Slot first: reservations are served in order, so a request's one call waits at most
        for the calls already reserved (one per in-flight slot of each other process), never
        for a whole batch. Taking a lease first would let a batch, whose workers re-take a
        lease the moment they give one back, starve a request polling for one.

        Lease shortly before the slot (`shared.lease_lead`), not after it: taking one is a database
        write whose delay grows with the host's load. Taken after the slot, it made a call
        leave late by that delay, and the next call, leaving on time from another process,
        reached a no-burst provider less than one spacing after it."""
        shared = self.shared
        send_at = await self._reserve_slot(loop)
        await asyncio.sleep(max(0.0, send_at - shared.lease_lead - time.time()))
        holder = shared.new_holder()
        waited, poll = False, LEASE_POLL_FIRST
        while (lease := await asyncio.to_thread(shared.take_lease, holder)) is None:
            # All held: poll fast at first (a call often ends soon), then back off, jittered
            # so that waiting processes do not poll in step.
            await asyncio.sleep(poll * random.uniform(0.5, 1.5))
            waited, poll = True, min(LEASE_POLL_MAX, poll * 2)
        self._hold(loop, lease, holder)
        try:
            if waited:
                # The slot passed while all leases were held. Sent now, the call could reach
                # the provider just before the next slot's call (an early arrival).
                send_at = await self._reserve_slot(loop)
            while True:
                await asyncio.sleep(max(0.0, send_at - time.time()))
                if self._resume_at <= loop.time():
                    return
                # A pause began while we slept: that slot is too early now, take another.
                send_at = await self._reserve_slot(loop)
        except BaseException:
            await self._release_shared()
            raise

    def _hold(self, loop: asyncio.AbstractEventLoop, lease: int, holder: str) -> None:
        """Record a lease this task holds and keep it renewed until it is given back."""
        self._leases[asyncio.current_task()] = (lease, holder)
        if self._renewer is None or self._renewer.done():
            self._renewer = loop.create_task(self._renew_while_held())

    async def _renew_while_held(self) -> None:
        """Keep this process's leases alive while it holds any (ends when none are left)."""
        while self._leases:
            await asyncio.sleep(self.shared.renew_every)
            held = list(self._leases.values())
            if not held:
                break
            try:
                renewed = await asyncio.to_thread(self.shared.renew_leases, held)
            except Exception as exc:  # a database blip: the next round tries again
                log.warning("renewing %s's in-flight leases failed: %s", self.name, exc)
                continue
            # A call that ended meanwhile deleted its own lease: only the others count.
            still_held = set(held) & set(self._leases.values())
            if renewed < len(still_held):
                log.warning(
                    "%d of %s's in-flight leases had lapsed (the process stalled longer "
                    "than a lease); their calls finish without one",
                    len(still_held) - renewed,
                    self.name,
                )

    async def _reserve_slot(self, loop: asyncio.AbstractEventLoop) -> float:
        """Reserve the model's next send slot once no cooldown runs; returns it as this
        host's wall-clock time. Background work asks again until the budget gives it one."""
        while True:
            await self._wait_cooldown(loop)
            slot, budget_now, retry_at = await asyncio.to_thread(self.shared.reserve)
            if slot is not None:
                return self._local_time(slot, budget_now)
            # Background work: the queue is long, ask again when it is not.
            await asyncio.sleep(max(0.0, self._local_time(retry_at, budget_now) - time.time()))

    def _local_time(self, budget_time: float, budget_now: float) -> float:
        """`budget_time` (on the budget's clock) on this host's wall clock.

        The offset between the two clocks is estimated as the smallest `local - budget_now`
        seen so far: it includes the least delay of a reservation's answer, never a delayed
        one. Sleeping "`slot - budget_now` from when the answer arrived" instead would make
        every call late by its own answer's delay, and a late call followed by a prompt one
        would reach a no-burst provider too early."""
        self._clock_offset = min(self._clock_offset, time.time() - budget_now)
        return budget_time + self._clock_offset

    async def _release_shared(self) -> None:
        lease = self._leases.pop(asyncio.current_task(), None)
        if lease is not None:
            await asyncio.shield(asyncio.to_thread(self.shared.release_lease, *lease))

    def release(self) -> None:
        if self._semaphore is None or self.in_flight <= 0:
            raise RuntimeError("ModelLimiter released more often than acquired")
        self.in_flight -= 1
        self._semaphore.release()

    async def __aenter__(self) -> ModelLimiter:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.shared is not None:
                await self._release_shared()
        finally:
            self.release()


class ThreadPacer:
    """At most `rate` slots per second across threads, evenly spaced (no burst after an idle
    spell, like `ModelLimiter` with burst 1): each caller takes the next slot and sleeps until
    it. Interruptible by `stop`.

    The digest senders are threads around blocking SMTP sessions (smtplib), where
    `ModelLimiter`'s asyncio primitives cannot be awaited; this is the same pacing for them.
    """

    def __init__(self, rate: float) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError("rate must be a positive number")
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> bool:
        """Sleep until this caller's slot; False if `stop` was set meanwhile."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        delay = slot - time.monotonic()
        return not (delay > 0 and stop.wait(delay))
