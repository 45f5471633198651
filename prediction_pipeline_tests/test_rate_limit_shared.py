"""ModelLimiter with a SharedBudget: the path every process takes when its model's limits are
shared through the app database (store/model_limits.py).

The budget here is an in-memory stand-in for `SharedModelBudget`, and the tests run on the
virtual-clock loop of test_rate_limit.py, so slots, lease polling, pauses and renewals are
checked exactly and in no wall-clock time. Two things keep it deterministic:

- the budget's blocking calls run inline instead of in a worker thread (a thread finishing
  "later" would race the virtual clock); one test on a real loop checks that they do run in
  a thread;
- the limiter's wall clock (`time.time()`, which it compares with the budget's clock) is the
  loop's virtual clock plus an epoch, and the budget's clock is skewed from it by
  `BUDGET_SKEW`, as a database host's clock may be.

test_shared_limits.py checks the real budget across processes (slow, PostgreSQL and SQLite).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import types

import pytest

from prediction_pipeline.clients import rate_limit
from prediction_pipeline.clients.rate_limit import LEASE_POLL_FIRST, LEASE_POLL_MAX, ModelLimiter

from .test_rate_limit import now, run_virtual

LOCAL_EPOCH = 1_700_000_000.0  # this host's wall clock at virtual time 0
BUDGET_SKEW = -7.0  # the database's clock is 7 s behind this host's


def budget_now() -> float:
    return now() + LOCAL_EPOCH + BUDGET_SKEW


class FakeBudget:
    """An in-memory SharedBudget: slots `interval` apart on the budget's clock, `leases`
    numbered in-flight leases, and a record of every call the limiter makes."""

    def __init__(
        self, interval: float, leases: int = 10, renew_every: float = 5.0, lease_lead: float = 0.0
    ) -> None:
        self.interval = interval
        self.renew_every = renew_every
        self.lease_lead = lease_lead
        self.next_slot = -1e18  # budget clock
        self.holders: list[str | None] = [None] * leases
        self.holders_made = 0
        self.take_attempts = 0
        self.reserved: list[float] = []  # each slot handed out (budget clock)
        self.released: list[tuple[int, str]] = []
        self.renewals: list[list[tuple[int, str]]] = []
        self.pushed: list[float] = []
        self.retry_at: list[float] = []  # reserve() answers "ask again at" these first
        self.renew_errors: list[Exception] = []  # renew_leases() raises these first
        self.lapsed: set[int] = set()  # leases renew_leases() reports as lost
        self.threads: set[int] = set()

    def _called(self) -> None:
        self.threads.add(threading.get_ident())

    def new_holder(self) -> str:
        self.holders_made += 1
        return f"holder-{self.holders_made}"

    def take_lease(self, holder: str) -> int | None:
        self._called()
        self.take_attempts += 1
        for slot, held_by in enumerate(self.holders):
            if held_by is None:
                self.holders[slot] = holder
                return slot
        return None

    def release_lease(self, slot: int, holder: str) -> None:
        self._called()
        self.released.append((slot, holder))
        if self.holders[slot] == holder:  # only the holder can release its lease
            self.holders[slot] = None

    def renew_leases(self, leases: list[tuple[int, str]]) -> int:
        self._called()
        self.renewals.append(list(leases))
        if self.renew_errors:
            raise self.renew_errors.pop(0)
        return sum(
            1 for slot, holder in leases if self.holders[slot] == holder and slot not in self.lapsed
        )

    def reserve(self) -> tuple[float | None, float, float | None]:
        self._called()
        current = budget_now()
        if self.retry_at:
            return None, current, self.retry_at.pop(0)
        slot = max(self.next_slot, current + self.lease_lead)
        self.next_slot = slot + self.interval
        self.reserved.append(slot)
        return slot, current, None

    def push_back(self, seconds: float) -> None:
        self._called()
        self.pushed.append(seconds)
        self.next_slot = max(self.next_slot, budget_now() + seconds)

    def held(self) -> int:
        return sum(1 for holder in self.holders if holder is not None)


def at(budget_time: float) -> float:
    """A budget-clock time as virtual loop time."""
    return budget_time - LOCAL_EPOCH - BUDGET_SKEW


@pytest.fixture
def inline_budget_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Budget calls run inline and the limiter's wall clock is the virtual one (see above)."""

    async def inline(func, /, *args, **kwargs):  # noqa: ANN001, ANN202 - asyncio.to_thread's shape
        return func(*args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", inline)
    monkeypatch.setattr(rate_limit, "time", types.SimpleNamespace(time=lambda: now() + LOCAL_EPOCH))


pytestmark = pytest.mark.usefixtures("inline_budget_calls")


async def _call(limiter: ModelLimiter, starts: list[float], hold: float = 0.0) -> None:
    async with limiter:
        starts.append(now())
        await asyncio.sleep(hold)


# -- send slots ----------------------------------------------------------------------------


def test_calls_leave_at_the_shared_slots_whatever_the_local_rate() -> None:
    # Locally 1000 calls a second would be allowed; the budget (all processes) allows two.
    budget = FakeBudget(interval=0.5)
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, shared=budget)
    starts: list[float] = []

    async def main() -> None:
        await asyncio.sleep(3.0)  # the budget's clock is far from the loop's: only slots count
        await asyncio.gather(*(_call(limiter, starts) for _ in range(4)))

    run_virtual(main)
    # Each call leaves at its slot, on this host's clock, although the two clocks disagree.
    assert starts == pytest.approx([3.0, 3.5, 4.0, 4.5], abs=1e-3)
    assert [at(slot) for slot in budget.reserved] == pytest.approx(starts, abs=1e-3)
    assert limiter.acquired == 4 and limiter.in_flight == 0
    assert budget.held() == 0


def test_the_lease_is_taken_its_lead_before_the_slot() -> None:
    # The lease (a database write) is taken `lease_lead` before the slot, then the call
    # sleeps to the slot: a slow write cannot make it leave late. The first slot of an idle
    # model is the lead away, so that holds for it too.
    budget = FakeBudget(interval=0.5, lease_lead=0.02)
    taken_at: list[float] = []
    real_take = budget.take_lease

    def take_lease(holder: str) -> int | None:
        taken_at.append(now())
        return real_take(holder)

    budget.take_lease = take_lease  # type: ignore[method-assign]
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, shared=budget)
    starts: list[float] = []

    async def main() -> None:
        await asyncio.gather(*(_call(limiter, starts) for _ in range(3)))

    run_virtual(main)
    assert starts == pytest.approx([0.02, 0.52, 1.02], abs=1e-6)
    assert taken_at == pytest.approx([0.0, 0.5, 1.0], abs=1e-6)


def test_the_clock_offset_is_the_least_delayed_answer() -> None:
    # The first answer is delayed (the budget's `now` is 0.2 s old when it arrives); later
    # prompt answers correct the estimate instead of every call being 0.2 s late.
    budget = FakeBudget(interval=1.0)
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, shared=budget)
    starts: list[float] = []
    real_reserve = budget.reserve
    delays = [0.2]

    def reserve() -> tuple[float | None, float, float | None]:
        slot, current, retry = real_reserve()
        return slot, current - (delays.pop() if delays else 0.0), retry

    budget.reserve = reserve  # type: ignore[method-assign]

    async def main() -> None:
        for _ in range(3):
            await _call(limiter, starts)

    run_virtual(main)
    # The delayed answer makes the first call leave 0.2 s late at worst (never early), then
    # the prompt answers put every later call on its slot again.
    assert starts[0] == pytest.approx(0.2, abs=1e-3)
    assert starts[1:] == pytest.approx([1.0, 2.0], abs=1e-3)


def test_a_background_caller_asks_again_when_the_budget_says() -> None:
    budget = FakeBudget(interval=0.5)
    budget.retry_at = [budget_now_at(2.0), budget_now_at(3.0)]
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=1, shared=budget)
    starts: list[float] = []

    run_virtual(lambda: _call(limiter, starts))

    assert starts == pytest.approx([3.0], abs=1e-3)
    assert len(budget.reserved) == 1 and budget.held() == 0


def test_a_background_caller_told_a_past_time_asks_again_at_once() -> None:
    # "Ask again at" may already have passed when the answer arrives (a slow round trip):
    # the caller asks again at once, not after some minimum wait.
    budget = FakeBudget(interval=0.5)
    budget.retry_at = [budget_now_at(-1.0)]
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=1, shared=budget)
    starts: list[float] = []

    run_virtual(lambda: _call(limiter, starts))

    assert starts == pytest.approx([0.0], abs=1e-6)


def budget_now_at(virtual: float) -> float:
    return virtual + LOCAL_EPOCH + BUDGET_SKEW


# -- cooldown ------------------------------------------------------------------------------


def test_a_pause_backs_off_every_process_through_the_budget() -> None:
    budget = FakeBudget(interval=0.1)
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, shared=budget)
    starts: list[float] = []

    async def main() -> None:
        await _call(limiter, starts)
        limiter.pause(4.0)  # this call saw a 429
        await asyncio.sleep(0)  # the push-back runs in the background
        assert budget.pushed == [4.0]
        await asyncio.gather(*(_call(limiter, starts) for _ in range(2)))

    run_virtual(main)
    assert starts == pytest.approx([0.0, 4.0, 4.1], abs=1e-3)
    assert limiter.pauses == [4.0]


def test_a_pause_while_sleeping_to_a_slot_takes_a_later_slot() -> None:
    budget = FakeBudget(interval=1.0)
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, shared=budget)
    starts: list[float] = []

    async def main() -> None:
        await _call(limiter, starts)  # t = 0
        waiter = asyncio.create_task(_call(limiter, starts))  # its slot is t = 1
        await asyncio.sleep(0.5)
        limiter.pause(2.0)  # cooldown until t = 2.5: the slot at t = 1 is too early now
        await waiter

    run_virtual(main)
    assert starts == pytest.approx([0.0, 2.5], abs=1e-3)
    assert len(budget.reserved) == 3  # t = 0, the abandoned t = 1, t = 2.5


# -- in-flight leases ----------------------------------------------------------------------


def test_a_call_waits_for_a_lease_another_process_holds_then_takes_a_fresh_slot() -> None:
    budget = FakeBudget(interval=0.5, leases=1)
    budget.holders[0] = "another process"
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, shared=budget)
    starts: list[float] = []

    async def other_process_finishes() -> None:
        await asyncio.sleep(2.0)
        budget.release_lease(0, "another process")

    async def main() -> None:
        await asyncio.gather(_call(limiter, starts), other_process_finishes())

    run_virtual(main)
    (start,) = starts
    # Found within one (capped) poll of the lease coming free, not a growing backoff later.
    assert 2.0 <= start <= 2.0 + LEASE_POLL_MAX * 1.5 + 1e-3
    # Its first slot (t = 0) passed while it polled: it left at a second one, not early.
    assert len(budget.reserved) == 2
    assert start == pytest.approx(at(budget.reserved[1]), abs=1e-3)
    # The polling backs off: a few dozen reads in two seconds, not one per loop turn.
    assert 5 <= budget.take_attempts <= 25
    assert budget.released == [(0, "another process"), (0, "holder-1")]
    assert budget.held() == 0


@pytest.mark.parametrize("jitter", ["low", "high"])
def test_lease_polls_back_off_from_fast_to_capped_with_jitter(
    jitter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lease held elsewhere is polled for: fast at first (a call often ends soon), then
    # doubling up to LEASE_POLL_MAX, each wait jittered by +-50% so waiting processes do not
    # poll in step. The jitter is pinned at one end of its range here.
    monkeypatch.setattr(
        rate_limit.random, "uniform", lambda low, high: low if jitter == "low" else high
    )
    budget = FakeBudget(interval=0.0, leases=1)
    budget.holders[0] = "another process"
    polls: list[float] = []
    real_take = budget.take_lease

    def take_lease(holder: str) -> int | None:
        polls.append(now())
        if now() >= 3.0:
            budget.holders[0] = None  # the other call ended
        return real_take(holder)

    budget.take_lease = take_lease  # type: ignore[method-assign]
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=1, shared=budget)
    run_virtual(lambda: _call(limiter, []))

    waits = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    factor = 0.5 if jitter == "low" else 1.5
    schedule = [min(LEASE_POLL_MAX, LEASE_POLL_FIRST * 2**i) * factor for i in range(len(waits))]
    assert polls[0] == pytest.approx(0.0, abs=1e-6)
    assert waits == pytest.approx(schedule, abs=1e-6)


def test_calls_hold_at_most_the_leases_there_are() -> None:
    budget = FakeBudget(interval=0.01, leases=2)
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, shared=budget)
    starts: list[float] = []
    peak = 0

    async def one() -> None:
        nonlocal peak
        async with limiter:
            peak = max(peak, budget.held())
            starts.append(now())
            await asyncio.sleep(1.0)

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(4)))

    run_virtual(main)
    assert peak == 2
    assert sorted(starts)[2] >= 1.0  # the third call waited for a lease to come free
    assert budget.held() == 0 and limiter.in_flight == 0
    # Every lease was released by the holder that took it.
    assert sorted(holder for _, holder in budget.released) == [f"holder-{i}" for i in range(1, 5)]


def test_a_lease_is_given_back_when_the_body_raises() -> None:
    budget = FakeBudget(interval=0.1, leases=1)
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=1, shared=budget)

    async def main() -> None:
        with pytest.raises(ValueError, match="boom"):
            async with limiter:
                assert budget.held() == 1
                raise ValueError("boom")
        assert budget.held() == 0
        async with limiter:  # the lease and the local slot are free again
            pass

    run_virtual(main)
    assert budget.released == [(0, "holder-1"), (0, "holder-2")]
    assert limiter.in_flight == 0


def test_a_call_cancelled_after_taking_a_lease_late_gives_it_back() -> None:
    # It polled for the lease, got it, then waits for a fresh slot far ahead (the other
    # processes reserved many): cancelled there, it must release the lease it holds.
    budget = FakeBudget(interval=0.5, leases=1)
    budget.holders[0] = "another process"
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=1, shared=budget)
    starts: list[float] = []

    async def main() -> None:
        task = asyncio.create_task(_call(limiter, starts))
        await asyncio.sleep(1.0)
        budget.next_slot = budget_now() + 60.0  # the queue grew meanwhile
        budget.release_lease(0, "another process")
        await asyncio.sleep(1.0)  # it has the lease and sleeps towards t = 61
        assert budget.holders[0] == "holder-1"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.held() == 0
        await asyncio.wait_for(_call(limiter, starts), timeout=120)

    run_virtual(main)
    assert starts == pytest.approx([61.5], abs=1e-3)  # only the second call, at its slot
    assert budget.released[-2:] == [(0, "holder-1"), (0, "holder-2")]


# -- lease renewal -------------------------------------------------------------------------


def test_leases_are_renewed_while_a_call_lasts_and_no_longer() -> None:
    budget = FakeBudget(interval=0.1, renew_every=5.0)
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, shared=budget)
    starts: list[float] = []

    async def main() -> None:
        await _call(limiter, starts, hold=12.0)  # renewed at t = 5 and t = 10
        await asyncio.sleep(30.0)
        await _call(limiter, starts, hold=6.0)  # a new call: renewal starts again

    run_virtual(main)
    assert budget.renewals == [[(0, "holder-1")], [(0, "holder-1")], [(0, "holder-2")]]
    assert budget.held() == 0


def test_a_failed_renewal_is_retried_next_round(caplog: pytest.LogCaptureFixture) -> None:
    budget = FakeBudget(interval=0.1, renew_every=5.0)
    budget.renew_errors = [OSError("database restarting")]
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, name="m", shared=budget)

    with caplog.at_level(logging.WARNING, logger=rate_limit.__name__):
        run_virtual(lambda: _call(limiter, [], hold=11.0))

    assert len(budget.renewals) == 2  # t = 5 failed, t = 10 renewed
    assert [r.getMessage() for r in caplog.records] == [
        "renewing m's in-flight leases failed: database restarting"
    ]
    assert budget.held() == 0


def test_lapsed_leases_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    budget = FakeBudget(interval=0.0, renew_every=5.0)
    budget.lapsed = {0}
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, name="m", shared=budget)

    async def main() -> None:
        await asyncio.gather(_call(limiter, [], hold=6.0), _call(limiter, [], hold=6.0))

    with caplog.at_level(logging.WARNING, logger=rate_limit.__name__):
        run_virtual(main)

    assert budget.renewals == [[(0, "holder-1"), (1, "holder-2")]]
    lapsed = [r.getMessage() for r in caplog.records if "lapsed" in r.getMessage()]
    assert lapsed == [
        "1 of m's in-flight leases had lapsed (the process stalled longer than a lease); "
        "their calls finish without one"
    ]


def test_no_lapse_is_reported_for_a_call_that_ended_during_the_renewal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Renewal reads the leases held, then the budget answers; a call ending in between has
    # deleted its own lease, which must not be taken for a lapsed one.
    budget = FakeBudget(interval=0.0, renew_every=5.0)
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, name="m", shared=budget)
    real_renew = budget.renew_leases

    def renew_while_one_call_ends(leases: list[tuple[int, str]]) -> int:
        renewed = real_renew(leases)
        limiter._leases.pop(next(iter(limiter._leases)))  # that call's __aexit__ ran
        return renewed - 1

    budget.renew_leases = renew_while_one_call_ends  # type: ignore[method-assign]

    async def main() -> None:
        await asyncio.gather(_call(limiter, [], hold=6.0), _call(limiter, [], hold=6.0))

    with caplog.at_level(logging.WARNING, logger=rate_limit.__name__):
        run_virtual(main)
    assert len(budget.renewals) == 1
    assert "lapsed" not in caplog.text


# -- threads -------------------------------------------------------------------------------


def test_budget_calls_run_off_the_event_loop_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real asyncio.to_thread and wall clock for this one test
    budget = FakeBudget(interval=0.0)
    budget_now_real = types.SimpleNamespace(value=0.0)

    def reserve() -> tuple[float | None, float, float | None]:
        budget._called()
        return budget_now_real.value, budget_now_real.value, None  # the slot is now

    budget.reserve = reserve  # type: ignore[method-assign]
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=10, shared=budget)

    async def main() -> None:
        async with limiter:
            limiter.pause(0.0)
        await asyncio.gather(*limiter._background)  # the push-back, run in the background

    asyncio.run(main())
    assert budget.threads and threading.get_ident() not in budget.threads
    assert budget.released == [(0, "holder-1")] and budget.pushed == [0.0]
