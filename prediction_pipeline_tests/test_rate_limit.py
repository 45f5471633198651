"""ModelLimiter: steady rate, in-flight cap, shared cooldown.

The tests run on an event loop with a *virtual clock*: when every task is waiting, the loop
jumps its clock to the next timer instead of sleeping. aiolimiter and the limiter read the
loop's clock, so rates and pauses are checked exactly, in no wall-clock time and with no
timing flakiness.
"""

from __future__ import annotations

import asyncio
import selectors
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from prediction_pipeline.clients.rate_limit import ModelLimiter, ThreadPacer

EPS = 1e-6
TICK = 1e-9  # virtual seconds per turn of the event loop


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock advances by the select timeout instead of waiting."""

    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now = 0.0
        real_select = self._selector.select

        def select(timeout: float | None = None) -> list[Any]:
            if timeout is None:  # nothing scheduled: only I/O could wake us
                events = real_select(5.0)
                if not events:
                    raise RuntimeError("virtual clock loop: every task waits forever")
                return events
            # Like a real clock, time also moves a little on every turn of the loop: a
            # timer computed to fire "now" (float rounding in aiolimiter) cannot spin forever.
            self._virtual_now += max(timeout, 0.0) + TICK
            return real_select(0)

        self._selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        return self._virtual_now


def run_virtual(main: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main())


def now() -> float:
    return asyncio.get_running_loop().time()


def test_virtual_clock_loop_really_is_virtual() -> None:
    async def main() -> float:
        await asyncio.sleep(3600)
        return now()

    assert run_virtual(main) == pytest.approx(3600)


# -- rate ----------------------------------------------------------------------------------


def _acquisition_times(limiter: ModelLimiter, n: int) -> list[float]:
    async def main() -> list[float]:
        times: list[float] = []

        async def one() -> None:
            async with limiter:
                times.append(now())

        await asyncio.gather(*(one() for _ in range(n)))
        return times

    return run_virtual(main)


def test_rate_is_steady_without_a_burst() -> None:
    times = _acquisition_times(ModelLimiter(requests_per_second=10, max_in_flight=100), 25)

    assert len(times) == 25
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.1 - EPS  # spaced 1/rps apart from the very start: no burst
    assert times[-1] == pytest.approx(2.4, abs=0.01)  # and not slower than the rate
    for start in times:  # no one-second window holds more than the rate
        assert sum(1 for t in times if start <= t < start + 1.0) <= 10


def test_burst_lets_that_many_through_at_once_then_the_rate() -> None:
    times = _acquisition_times(ModelLimiter(10, 100, burst=5), 25)

    assert sum(1 for t in times if t < EPS) == 5
    assert times[-1] == pytest.approx(2.0, abs=0.01)  # 20 more at 10/s


def test_fractional_rate() -> None:
    times = _acquisition_times(ModelLimiter(requests_per_second=0.5, max_in_flight=1), 3)
    assert times == pytest.approx([0.0, 2.0, 4.0], abs=0.01)


# -- in-flight cap -------------------------------------------------------------------------


def test_in_flight_cap_is_never_exceeded() -> None:
    limiter = ModelLimiter(requests_per_second=1000, max_in_flight=3)

    async def main() -> int:
        current = peak = 0

        async def one(i: int) -> None:
            nonlocal current, peak
            async with limiter:
                current += 1
                peak = max(peak, current)
                assert limiter.in_flight == current <= 3
                await asyncio.sleep(0.01 * (1 + i % 4))
                current -= 1

        await asyncio.gather(*(one(i) for i in range(30)))
        return peak

    assert run_virtual(main) == 3
    assert limiter.max_in_flight_seen == 3
    assert limiter.in_flight == 0
    assert limiter.acquired == 30


def test_slot_is_released_when_the_body_raises() -> None:
    limiter = ModelLimiter(1000, 1)

    async def main() -> None:
        with pytest.raises(ValueError):
            async with limiter:
                raise ValueError("boom")
        async with limiter:
            assert limiter.in_flight == 1

    run_virtual(main)
    assert limiter.in_flight == 0


def test_cancelled_waiter_gives_its_slot_back() -> None:
    limiter = ModelLimiter(1000, 1)

    async def main() -> None:
        async with limiter:
            waiter = asyncio.create_task(limiter.acquire())
            await asyncio.sleep(0.1)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        async with limiter:
            pass

    run_virtual(main)
    assert limiter.in_flight == 0


def test_a_holder_cancelled_while_waiting_for_a_rate_token_gives_its_slot_back() -> None:
    # One slot, one call a second: the second caller takes the slot, then waits for a token;
    # cancelled there, it must hand the slot back or every later caller waits forever.
    limiter = ModelLimiter(requests_per_second=1, max_in_flight=1)

    async def main() -> float:
        async with limiter:
            pass
        holder = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0.5)  # it holds the slot and waits for the next token (t=1)
        assert limiter._semaphore.locked() and limiter.in_flight == 0
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        # Virtual time: the wait_for bound costs no real time, it only ends a hung wait.
        await asyncio.wait_for(limiter.acquire(), timeout=60)
        limiter.release()
        return now()

    assert run_virtual(main) == pytest.approx(1.0, abs=1e-3)
    assert limiter.in_flight == 0 and limiter.acquired == 2


# -- cooldown ------------------------------------------------------------------------------


def test_pause_blocks_every_other_caller_until_it_ends() -> None:
    limiter = ModelLimiter(requests_per_second=100, max_in_flight=10)

    async def main() -> list[float]:
        async with limiter:  # t = 0: this call "saw a 429"
            limiter.pause(5.0)
        assert limiter.cooldown_remaining() == pytest.approx(5.0)
        times: list[float] = []

        async def other() -> None:
            async with limiter:
                times.append(now())

        await asyncio.gather(*(other() for _ in range(4)))
        return times

    times = run_virtual(main)
    assert len(times) == 4
    assert min(times) >= 5.0 - EPS
    # After the cooldown the steady rate resumes: no stampede.
    assert sorted(times) == pytest.approx([5.0, 5.01, 5.02, 5.03], abs=1e-3)
    assert limiter.pauses == [5.0]
    assert limiter.pause_count == 1


def test_pause_holds_callers_already_queued_for_a_slot() -> None:
    limiter = ModelLimiter(requests_per_second=100, max_in_flight=1)

    async def main() -> float:
        waited: list[float] = []

        async def queued() -> None:
            async with limiter:
                waited.append(now())

        async with limiter:
            task = asyncio.create_task(queued())  # waits for the one slot
            await asyncio.sleep(1.0)
            limiter.pause(3.0)  # at t = 1: cooldown until t = 4
        await task
        return waited[0]

    assert run_virtual(main) >= 4.0 - EPS


def test_pause_holds_a_caller_waiting_for_a_rate_token() -> None:
    limiter = ModelLimiter(requests_per_second=1, max_in_flight=5)

    async def main() -> float:
        async with limiter:  # t = 0 takes the only token
            pass
        task = asyncio.create_task(_acquire_at(limiter))  # its token comes at t = 1
        await asyncio.sleep(0.5)
        limiter.pause(2.0)  # cooldown until t = 2.5
        return await task

    assert run_virtual(main) >= 2.5 - EPS


async def _acquire_at(limiter: ModelLimiter) -> float:
    async with limiter:
        return now()


def test_pause_extends_but_never_shortens() -> None:
    limiter = ModelLimiter(100, 1)

    async def main() -> float:
        limiter.pause(5.0)
        limiter.pause(1.0)
        return await _acquire_at(limiter)

    assert run_virtual(main) == pytest.approx(5.0)
    assert limiter.pauses == [5.0, 1.0]


def test_zero_pause_does_not_block() -> None:
    limiter = ModelLimiter(100, 1)

    async def main() -> float:
        limiter.pause(0)
        return await _acquire_at(limiter)

    assert run_virtual(main) == pytest.approx(0.0, abs=EPS)


# -- lifecycle and validation --------------------------------------------------------------


def test_limiter_can_be_reused_across_event_loops() -> None:
    limiter = ModelLimiter(100, 2)

    async def main() -> None:
        limiter.pause(1.0)
        async with limiter:
            pass

    run_virtual(main)
    asyncio.run(_acquire_at(limiter))  # a fresh loop, real clock: no stale cooldown
    assert limiter.acquired == 2
    assert limiter.in_flight == 0


def test_a_new_loop_starts_without_the_old_loops_cooldown() -> None:
    # Each run has its own event loop and clock (one asyncio.run per run): a cooldown set on
    # the last run's clock means nothing on the next one's and must not hold it.
    limiter = ModelLimiter(100, 2)

    async def paused_for_an_hour() -> None:
        async with limiter:
            limiter.pause(3600.0)

    run_virtual(paused_for_an_hour)
    assert run_virtual(lambda: _acquire_at(limiter)) == pytest.approx(0.0, abs=EPS)
    assert limiter.acquired == 2


def test_a_limiter_holding_a_slot_in_one_loop_refuses_another_loop() -> None:
    limiter = ModelLimiter(100, 2)
    errors: list[BaseException] = []

    def other_loop() -> None:
        try:
            asyncio.run(_acquire_at(limiter))
        except RuntimeError as exc:
            errors.append(exc)

    async def main() -> None:
        async with limiter:  # in flight on this loop
            thread = threading.Thread(target=other_loop)
            thread.start()
            thread.join()

    run_virtual(main)
    assert [str(e) for e in errors] == ["ModelLimiter used from two event loops at once"]
    assert limiter.acquired == 1 and limiter.in_flight == 0


def test_a_fresh_limiter_reports_nothing_used() -> None:
    limiter = ModelLimiter(1, 4)
    assert (limiter.in_flight, limiter.max_in_flight_seen, limiter.acquired) == (0, 0, 0)
    assert limiter.pauses == [] and limiter.pause_count == 0
    assert limiter.cooldown_remaining() == 0.0  # outside any event loop


def test_cooldown_remaining_counts_down_to_zero() -> None:
    limiter = ModelLimiter(100, 1)

    async def main() -> list[float]:
        await asyncio.sleep(10.0)
        limiter.pause(4.0)
        seen = [limiter.cooldown_remaining()]
        await asyncio.sleep(1.0)
        seen.append(limiter.cooldown_remaining())
        await asyncio.sleep(5.0)
        seen.append(limiter.cooldown_remaining())
        return seen

    assert run_virtual(main) == pytest.approx([4.0, 3.0, 0.0], abs=1e-6)
    assert limiter.paused_until == pytest.approx(14.0)


def test_a_short_pause_holds_callers_too() -> None:
    # One call a second: a caller let through before the pause ends would take the token of
    # t = 0 and, sent back to wait, go at t = 1 instead of when the pause ends.
    limiter = ModelLimiter(1, 1)

    async def main() -> float:
        limiter.pause(0.5)
        return await _acquire_at(limiter)

    assert run_virtual(main) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize(
    ("rps", "in_flight", "burst", "named"),
    [
        (0, 1, 1, "requests_per_second"),
        (-1, 1, 1, "requests_per_second"),
        (float("inf"), 1, 1, "requests_per_second"),
        (float("nan"), 1, 1, "requests_per_second"),
        (1, 0, 1, "max_in_flight"),
        (1, 1, 0.5, "burst"),
    ],
)
def test_invalid_settings(rps: float, in_flight: int, burst: float, named: str) -> None:
    # The message names the setting to fix (they come from the model registry's YAML).
    with pytest.raises(ValueError, match=named):
        ModelLimiter(rps, in_flight, burst=burst)


def test_the_refusals_read_exactly_so() -> None:
    def message(call) -> str:
        with pytest.raises((ValueError, RuntimeError)) as refused:
            call()
        return str(refused.value)

    assert message(lambda: ModelLimiter(0, 1)) == "requests_per_second must be a positive number"
    assert message(lambda: ModelLimiter(1, 0)) == "max_in_flight must be >= 1"
    assert message(lambda: ModelLimiter(1, 1, burst=0)) == "burst must be >= 1"
    assert message(lambda: ModelLimiter(1, 1).pause(-1)) == (
        "pause seconds must be a finite number >= 0"
    )
    assert message(ModelLimiter(1, 1).release) == ("ModelLimiter released more often than acquired")
    assert message(lambda: ThreadPacer(0)) == "rate must be a positive number"


def test_invalid_pause() -> None:
    limiter = ModelLimiter(1, 1)

    async def main() -> None:
        for seconds in (-1, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="pause seconds"):
                limiter.pause(seconds)

    run_virtual(main)
    assert limiter.pauses == []


def test_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="released more often than acquired"):
        ModelLimiter(1, 1).release()


def test_releasing_twice_is_an_error() -> None:
    limiter = ModelLimiter(100, 2)

    async def main() -> None:
        await limiter.acquire()
        limiter.release()
        with pytest.raises(RuntimeError, match="released more often than acquired"):
            limiter.release()

    run_virtual(main)
    assert limiter.in_flight == 0


# -- ThreadPacer ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_thread_pacer_refuses_a_rate_that_is_not_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be a positive number"):
        ThreadPacer(rate)


def test_thread_pacer_spaces_slots_one_interval_apart() -> None:
    assert ThreadPacer(0.5).interval == 2.0  # below one a second is allowed
    pacer = ThreadPacer(2)
    stop = threading.Event()
    assert pacer.wait(stop) is True  # the first slot is now
    stop.set()
    assert pacer.wait(stop) is False  # the next is 0.5 s away: a stopped sender gives up


def test_thread_pacer_lets_a_live_sender_go_at_its_slot() -> None:
    pacer = ThreadPacer(20)  # slots 50 ms apart
    stop = threading.Event()
    assert pacer.wait(stop) is True
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(pacer.wait(stop)), daemon=True)
    waiter.start()
    waiter.join(timeout=10)  # its slot is 50 ms away: it waits that long, not until stopped
    assert results == [True]


def test_repr() -> None:
    assert repr(ModelLimiter(2.5, 3, name="openai/gpt-4o")) == (
        "ModelLimiter('openai/gpt-4o', rps=2.5, max_in_flight=3, in_flight=0)"
    )
    assert repr(ModelLimiter(2.5, 3)) == "ModelLimiter(rps=2.5, max_in_flight=3, in_flight=0)"
