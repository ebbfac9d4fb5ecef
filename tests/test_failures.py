"""Failures: isolation, dead letters, logging, retries, and what is not a failure."""

from __future__ import annotations

import asyncio
import collections.abc as c
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from eventbus import DeadLetter, Event, EventBus, PublishResult, RetryPolicy
from tests.clocks import TestClock


class Placed(Event):
    order_id: str = "o1"


class Shipped(Event):
    order_id: str = "o1"


class OrderError(Exception):
    pass


class Fatal(BaseException):
    """Not an Exception: must never be swallowed as a handler failure."""


def _name(handler: c.Callable[..., object]) -> str:
    return f"{handler.__module__}.{handler.__qualname__}"


class Sleeps:
    """Injected sleeps: record the delays instead of waiting."""

    def __init__(self) -> None:
        self.sync: list[float] = []
        self.async_: list[float] = []

    def sleep(self, delay: float) -> None:
        self.sync.append(delay)

    async def async_sleep(self, delay: float) -> None:
        self.async_.append(delay)

    def bus(self, **options: object) -> EventBus:
        clock = TestClock(sleep=self.sleep, sleep_async=self.async_sleep)
        return EventBus(clock=clock, **options)  # type: ignore[arg-type]


# -- isolation -------------------------------------------------------------------------


def _isolation_handlers(bus: EventBus, log: list[str]) -> None:
    @bus.subscribe(priority=2)
    def first(event: Placed) -> None:
        log.append("first")

    @bus.subscribe(priority=1)
    def sync_broken(event: Placed) -> None:
        raise OrderError("sync broken")

    @bus.subscribe(priority=1)
    async def async_broken(event: Placed) -> None:
        await asyncio.sleep(0)
        raise KeyError("async broken")

    @bus.subscribe
    async def middle(event: Placed) -> None:
        log.append("middle")

    @bus.subscribe(priority=-1)
    def last(event: Placed) -> None:
        log.append("last")


def _check_isolation(result: PublishResult, bus: EventBus, log: list[str]) -> None:
    assert log == ["first", "middle", "last"]
    assert not result.ok
    assert [letter.handler.rsplit(".", 1)[-1] for letter in result.dead_letters] == [
        "sync_broken",
        "async_broken",
    ]
    assert list(bus.dead_letters) == result.dead_letters


def test_failure_never_stops_other_handlers() -> None:
    bus = EventBus()
    log: list[str] = []
    _isolation_handlers(bus, log)
    result = bus.publish(Placed())
    _check_isolation(result, bus, log)


def test_failure_never_stops_other_handlers_async() -> None:
    bus = EventBus()
    log: list[str] = []
    _isolation_handlers(bus, log)
    result = asyncio.run(bus.publish_async(Placed()))
    _check_isolation(result, bus, log)


def test_failure_never_stops_other_handlers_concurrent_async() -> None:
    bus = EventBus(concurrent=True)
    log: list[str] = []
    _isolation_handlers(bus, log)
    result = asyncio.run(bus.publish_async(Placed()))
    assert log == ["first", "middle", "last"]
    assert sorted(letter.handler.rsplit(".", 1)[-1] for letter in result.dead_letters) == [
        "async_broken",
        "sync_broken",
    ]


def test_failure_never_stops_run_in_thread_handlers_async() -> None:
    bus = EventBus()
    log: list[str] = []

    @bus.subscribe(run_in_thread=True)
    def broken(event: Placed) -> None:
        raise OrderError("in a thread")

    @bus.subscribe(run_in_thread=True)
    def fine(event: Placed) -> None:
        log.append("fine")

    result = asyncio.run(bus.publish_async(Placed()))
    assert log == ["fine"]
    [letter] = result.dead_letters
    assert letter.error_message == "in a thread"


def test_failure_does_not_affect_later_publishes() -> None:
    bus = EventBus()
    log: list[str] = []

    @bus.subscribe
    def flaky(event: Placed) -> None:
        if event.order_id == "bad":
            raise OrderError("bad order")
        log.append(event.order_id)

    assert not bus.publish(Placed(order_id="bad")).ok
    assert bus.publish(Placed(order_id="good")).ok
    assert asyncio.run(bus.publish_async(Placed(order_id="good too"))).ok
    assert log == ["good", "good too"]
    assert len(bus.dead_letters) == 1


# -- dead letters ----------------------------------------------------------------------


def _check_letter(
    letter: DeadLetter,
    event: Event,
    handler: c.Callable[..., object],
    before: datetime,
    after: datetime,
) -> None:
    assert letter.event is event
    assert letter.event_type == event.event_type
    assert letter.handler == _name(handler)
    assert letter.handler == f"{__name__}.{handler.__qualname__}"
    assert letter.attempts == 1
    assert letter.error_type == f"{__name__}.OrderError"
    assert letter.error_message == "cannot place o1"
    assert "Traceback" in letter.traceback
    assert "OrderError: cannot place o1" in letter.traceback
    assert handler.__name__ in letter.traceback  # the frame that raised
    assert letter.failed_at.tzinfo is not None
    assert letter.failed_at.utcoffset() == timedelta(0)
    assert before <= letter.failed_at <= after


def test_dead_letter_fields() -> None:
    bus = EventBus()

    @bus.subscribe
    def refuse(event: Placed) -> None:
        raise OrderError(f"cannot place {event.order_id}")

    event = Placed()
    before = datetime.now(UTC)
    result = bus.publish(event)
    after = datetime.now(UTC)
    [letter] = result.dead_letters
    _check_letter(letter, event, refuse, before, after)
    assert list(bus.dead_letters) == [letter]
    assert len(bus.dead_letters) == 1


def test_dead_letter_fields_async() -> None:
    bus = EventBus()

    @bus.subscribe
    async def refuse(event: Placed) -> None:
        await asyncio.sleep(0)
        raise OrderError(f"cannot place {event.order_id}")

    event = Placed()
    before = datetime.now(UTC)
    result = asyncio.run(bus.publish_async(event))
    after = datetime.now(UTC)
    [letter] = result.dead_letters
    _check_letter(letter, event, refuse, before, after)
    assert list(bus.dead_letters) == [letter]


def test_dead_letter_of_async_handler_on_sync_path() -> None:
    bus = EventBus()

    @bus.subscribe
    async def refuse(event: Placed) -> None:
        raise OrderError(f"cannot place {event.order_id}")

    event = Placed()
    before = datetime.now(UTC)
    result = bus.publish(event)
    after = datetime.now(UTC)
    [letter] = result.dead_letters
    _check_letter(letter, event, refuse, before, after)


def test_dead_letter_names_builtin_and_local_error_types() -> None:
    bus = EventBus()

    class LocalError(Exception):
        pass

    @bus.subscribe
    def builtin(event: Placed) -> None:
        raise ValueError("v")

    @bus.subscribe
    def local(event: Placed) -> None:
        raise LocalError("l")

    result = bus.publish(Placed())
    assert [letter.error_type for letter in result.dead_letters] == [
        "builtins.ValueError",
        f"{__name__}.{LocalError.__qualname__}",
    ]
    assert result.dead_letters[1].error_type.endswith(
        "test_dead_letter_names_builtin_and_local_error_types.<locals>.LocalError"
    )


def test_dead_letter_names_methods_and_callables() -> None:
    bus = EventBus()

    class Service:
        def handle(self, event: Placed) -> None:
            raise OrderError("method")

    class CallableHandler:
        def __call__(self, event: Placed) -> None:
            raise OrderError("callable")

    bus.subscribe(Service().handle)
    bus.subscribe(Placed)(CallableHandler())
    result = bus.publish(Placed())
    assert [letter.handler for letter in result.dead_letters] == [
        f"{__name__}.{Service.__qualname__}.handle",
        f"{__name__}.{CallableHandler.__qualname__}()",
    ]


def test_dead_letters_accumulate_across_publishes_sync_and_async() -> None:
    bus = EventBus()

    @bus.subscribe
    def refuse(event: Placed) -> None:
        raise OrderError("no")

    results = [bus.publish(Placed()), asyncio.run(bus.publish_async(Placed()))]
    letters = [r.dead_letters[0] for r in results]
    assert list(bus.dead_letters) == letters
    assert len({letter.id for letter in letters}) == 2


# -- logging ---------------------------------------------------------------------------


def test_library_configures_no_logging() -> None:
    bus = EventBus()

    @bus.subscribe
    def refuse(event: Placed) -> None:
        raise OrderError("no")

    for _ in range(2):  # before and after a failure has been logged
        logger = logging.getLogger("eventbus")
        assert logger.handlers == []
        assert logger.level == logging.NOTSET
        assert logger.propagate is True
        bus.publish(Placed())


def _check_logged(caplog: pytest.LogCaptureFixture, event: Placed, handler_name: str) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    [record] = errors
    assert record.name == "eventbus"
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert handler_name in message
    assert event.event_type in message
    assert str(event.event_id) in message
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], OrderError)


def test_failure_is_logged_at_error(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()

    @bus.subscribe
    def refuse(event: Placed) -> None:
        raise OrderError("no")

    event = Placed()
    bus.publish(event)
    _check_logged(caplog, event, _name(refuse))
    assert "OrderError: no" in caplog.text


def test_failure_is_logged_at_error_async(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()

    @bus.subscribe
    async def refuse(event: Placed) -> None:
        raise OrderError("no")

    event = Placed()
    asyncio.run(bus.publish_async(event))
    _check_logged(caplog, event, _name(refuse))


def test_success_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()

    @bus.subscribe
    def fine(event: Placed) -> None:
        pass

    bus.publish(Placed())
    asyncio.run(bus.publish_async(Placed()))
    assert [r for r in caplog.records if r.name.startswith("eventbus")] == []


class _BrokenStore:
    """A dead-letter store that cannot store."""

    def add(self, letter: DeadLetter, /) -> None:
        raise OSError("disk full")

    def remove(self, letter: DeadLetter, /) -> None:
        raise KeyError(letter)

    def get(self, letter_id: uuid.UUID, /) -> DeadLetter:
        raise KeyError(letter_id)

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> c.Iterator[DeadLetter]:
        return iter(())


def test_failing_store_keeps_letter_in_result_and_log(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(dead_letters=_BrokenStore())

    @bus.subscribe
    def refuse(event: Placed) -> None:
        raise OrderError("no")

    @bus.subscribe
    def after(event: Placed) -> None:
        pass

    result = bus.publish(Placed())
    [letter] = result.dead_letters
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert str(letter.event.event_id) in critical[0].getMessage()


# -- retries ---------------------------------------------------------------------------


def _flaky_sync(calls: list[int], failures: int) -> c.Callable[[Placed], None]:
    def flaky(event: Placed) -> None:
        calls.append(1)
        if len(calls) <= failures:
            raise OrderError(f"attempt {len(calls)}")

    return flaky


def _flaky_async(calls: list[int], failures: int) -> c.Callable[[Placed], c.Awaitable[None]]:
    async def flaky(event: Placed) -> None:
        calls.append(1)
        if len(calls) <= failures:
            raise OrderError(f"attempt {len(calls)}")

    return flaky


POLICY = RetryPolicy(max_attempts=4, initial_delay=0.5)
POLICY_DELAYS = [0.5, 1.0, 2.0]


def test_policy_delays() -> None:
    assert list(POLICY.delays()) == POLICY_DELAYS
    capped = RetryPolicy(max_attempts=5, initial_delay=1.0, backoff=3.0, max_delay=5.0)
    assert list(capped.delays()) == [1.0, 3.0, 5.0, 5.0]
    assert list(RetryPolicy().delays()) == []


@pytest.mark.parametrize("failures", [0, 1, 3])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync_handler", "async_handler"])
def test_retry_then_success(failures: int, use_async: bool) -> None:
    sleeps = Sleeps()
    bus = sleeps.bus()
    calls: list[int] = []
    handler = _flaky_async(calls, failures) if use_async else _flaky_sync(calls, failures)
    bus.subscribe(Placed, retry=POLICY)(handler)
    result = bus.publish(Placed())
    assert result.ok
    assert len(bus.dead_letters) == 0
    assert len(calls) == failures + 1
    # the sync path waits with the sync sleep, even for an async handler
    assert sleeps.sync == POLICY_DELAYS[:failures]
    assert sleeps.async_ == []


@pytest.mark.parametrize("failures", [0, 1, 3])
@pytest.mark.parametrize("kind", ["sync_handler", "async_handler", "run_in_thread", "concurrent"])
def test_retry_then_success_async(failures: int, kind: str) -> None:
    sleeps = Sleeps()
    bus = sleeps.bus(concurrent=kind == "concurrent")
    calls: list[int] = []
    if kind == "sync_handler":
        bus.subscribe(Placed, retry=POLICY)(_flaky_sync(calls, failures))
    elif kind == "run_in_thread":
        bus.subscribe(Placed, retry=POLICY, run_in_thread=True)(_flaky_sync(calls, failures))
    else:
        bus.subscribe(Placed, retry=POLICY)(_flaky_async(calls, failures))
        if kind == "concurrent":  # a second handler of equal priority: a concurrent group
            bus.subscribe(Placed, name="steady")(_flaky_async([], 0))
    result = asyncio.run(bus.publish_async(Placed()))
    assert result.ok
    assert len(calls) == failures + 1
    # the async path never blocks the loop: it waits with the async sleep
    assert sleeps.async_ == POLICY_DELAYS[:failures]
    assert sleeps.sync == []


def _check_exhausted(result: PublishResult, bus: EventBus, calls: list[int]) -> None:
    assert len(calls) == POLICY.max_attempts
    [letter] = result.dead_letters
    assert letter.attempts == POLICY.max_attempts
    assert letter.error_message == f"attempt {POLICY.max_attempts}"  # the last error
    assert list(bus.dead_letters) == [letter]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync_handler", "async_handler"])
def test_retry_exhausted(use_async: bool) -> None:
    sleeps = Sleeps()
    bus = sleeps.bus()
    calls: list[int] = []
    handler = _flaky_async(calls, 99) if use_async else _flaky_sync(calls, 99)
    bus.subscribe(Placed, retry=POLICY)(handler)
    result = bus.publish(Placed())
    _check_exhausted(result, bus, calls)
    assert sleeps.sync == list(POLICY.delays())


@pytest.mark.parametrize("use_async", [False, True], ids=["sync_handler", "async_handler"])
def test_retry_exhausted_async(use_async: bool) -> None:
    sleeps = Sleeps()
    bus = sleeps.bus()
    calls: list[int] = []
    handler = _flaky_async(calls, 99) if use_async else _flaky_sync(calls, 99)
    bus.subscribe(Placed, retry=POLICY)(handler)
    result = asyncio.run(bus.publish_async(Placed()))
    _check_exhausted(result, bus, calls)
    assert sleeps.async_ == list(POLICY.delays())


def test_retry_logs_warning_per_retry_and_one_error(caplog: pytest.LogCaptureFixture) -> None:
    sleeps = Sleeps()
    bus = sleeps.bus()
    calls: list[int] = []
    bus.subscribe(Placed, retry=POLICY)(_flaky_sync(calls, 99))
    bus.publish(Placed())
    levels = [r.levelno for r in caplog.records if r.name == "eventbus"]
    assert levels == [logging.WARNING] * 3 + [logging.ERROR]


def test_retry_logs_warning_per_retry_and_one_error_async(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleeps = Sleeps()
    bus = sleeps.bus()
    calls: list[int] = []
    bus.subscribe(Placed, retry=POLICY)(_flaky_async(calls, 99))
    asyncio.run(bus.publish_async(Placed()))
    levels = [r.levelno for r in caplog.records if r.name == "eventbus"]
    assert levels == [logging.WARNING] * 3 + [logging.ERROR]


def test_bus_wide_default_retry() -> None:
    sleeps = Sleeps()
    default = RetryPolicy(max_attempts=3, initial_delay=0.25)
    bus = sleeps.bus(retry=default)
    default_calls: list[int] = []
    own_calls: list[int] = []
    single_calls: list[int] = []
    bus.subscribe(Placed, name="default")(_flaky_sync(default_calls, 99))
    own, single = RetryPolicy(max_attempts=2), RetryPolicy(max_attempts=1)
    bus.subscribe(Placed, retry=own, name="own")(_flaky_sync(own_calls, 99))
    bus.subscribe(Placed, retry=single, name="single")(_flaky_sync(single_calls, 99))
    result = bus.publish(Placed())
    assert (len(default_calls), len(own_calls), len(single_calls)) == (3, 2, 1)
    assert [letter.attempts for letter in result.dead_letters] == [3, 2, 1]
    assert sleeps.sync == [0.25, 0.5, 0.0]


def test_bus_wide_default_retry_async() -> None:
    sleeps = Sleeps()
    default = RetryPolicy(max_attempts=3, initial_delay=0.25)
    bus = sleeps.bus(retry=default)
    default_calls: list[int] = []
    own_calls: list[int] = []
    single_calls: list[int] = []
    bus.subscribe(Placed, name="default")(_flaky_async(default_calls, 99))
    own, single = RetryPolicy(max_attempts=2), RetryPolicy(max_attempts=1)
    bus.subscribe(Placed, retry=own, name="own")(_flaky_async(own_calls, 99))
    bus.subscribe(Placed, retry=single, name="single")(_flaky_async(single_calls, 99))
    result = asyncio.run(bus.publish_async(Placed()))
    assert (len(default_calls), len(own_calls), len(single_calls)) == (3, 2, 1)
    assert [letter.attempts for letter in result.dead_letters] == [3, 2, 1]
    assert sleeps.async_ == [0.25, 0.5, 0.0]


def test_bus_wide_retry_must_be_a_policy() -> None:
    with pytest.raises(TypeError, match="RetryPolicy"):
        EventBus(retry=3)  # type: ignore[arg-type]


def test_retry_runs_other_handlers_after_the_retried_one() -> None:
    sleeps = Sleeps()
    bus = sleeps.bus()
    log: list[str] = []
    calls: list[int] = []
    bus.subscribe(Placed, priority=1, retry=POLICY)(_flaky_sync(calls, 2))

    @bus.subscribe
    def after(event: Placed) -> None:
        log.append(f"after {len(calls)} calls")

    assert bus.publish(Placed()).ok
    assert log == ["after 3 calls"]


# -- not failures: BaseException and cancellation ---------------------------------------


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit, Fatal])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync_handler", "async_handler"])
@pytest.mark.parametrize("path", ["publish", "publish_async"])
def test_base_exception_propagates(error: type[BaseException], use_async: bool, path: str) -> None:
    """Not a handler failure: no retry, no later handler, no dead letter, on either path."""
    sleeps = Sleeps()
    bus = sleeps.bus()
    log: list[str] = []

    if use_async:

        @bus.subscribe(retry=POLICY)
        async def interrupted_async(event: Placed) -> None:
            log.append("interrupted")
            raise error()

    else:

        @bus.subscribe(retry=POLICY)
        def interrupted(event: Placed) -> None:
            log.append("interrupted")
            raise error()

    @bus.subscribe(priority=-1)
    def never(event: Placed) -> None:
        log.append("never")  # pragma: no cover

    def run() -> object:
        if path == "publish":
            return bus.publish(Placed())
        return asyncio.run(bus.publish_async(Placed()))

    with pytest.raises(error):
        run()
    assert log == ["interrupted"]
    assert sleeps.sync == []
    assert sleeps.async_ == []
    assert len(bus.dead_letters) == 0


def test_base_exception_propagates_from_worker_thread_async() -> None:
    bus = EventBus()

    @bus.subscribe(run_in_thread=True)
    def interrupted(event: Placed) -> None:
        raise Fatal()

    with pytest.raises(Fatal):
        asyncio.run(bus.publish_async(Placed()))
    assert len(bus.dead_letters) == 0


def test_base_exception_drops_and_logs_queued_events(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    shipped: list[Shipped] = []

    @bus.subscribe(priority=1)
    def ship(event: Placed) -> None:
        bus.publish(Shipped(order_id="s1"))
        bus.publish(Shipped(order_id="s2"))

    @bus.subscribe
    def interrupted(event: Placed) -> None:
        raise KeyboardInterrupt

    bus.subscribe(Shipped)(shipped.append)
    with pytest.raises(KeyboardInterrupt):
        bus.publish(Placed())
    assert shipped == []
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "2 queued event(s) were not dispatched" in record.getMessage()
    assert Shipped.event_type in record.getMessage()
    # the bus is usable afterwards: the interrupted cascade is gone
    bus.unsubscribe(interrupted)
    assert bus.publish(Placed()).ok
    assert [s.order_id for s in shipped] == ["s1", "s2"]


def test_base_exception_drops_and_logs_queued_events_async(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    shipped: list[Shipped] = []

    @bus.subscribe(priority=1)
    async def ship(event: Placed) -> None:
        await bus.publish_async(Shipped(order_id="s1"))

    @bus.subscribe
    async def interrupted(event: Placed) -> None:
        raise Fatal()

    bus.subscribe(Shipped)(shipped.append)
    with pytest.raises(Fatal):
        asyncio.run(bus.publish_async(Placed()))
    assert shipped == []
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "1 queued event(s) were not dispatched" in record.getMessage()


def test_cancelled_error_from_handler_propagates() -> None:
    """On the sync path too: an async handler raising CancelledError on the private loop."""
    sleeps = Sleeps()
    bus = sleeps.bus()
    calls: list[int] = []

    @bus.subscribe(retry=POLICY)
    async def cancelled(event: Placed) -> None:
        calls.append(1)
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        bus.publish(Placed())
    assert calls == [1]
    assert len(bus.dead_letters) == 0


def test_cancelled_error_from_handler_propagates_async() -> None:
    sleeps = Sleeps()
    bus = sleeps.bus()
    calls: list[int] = []

    @bus.subscribe(retry=POLICY)
    async def cancelled(event: Placed) -> None:
        calls.append(1)
        raise asyncio.CancelledError

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            await bus.publish_async(Placed())

    asyncio.run(main())
    assert calls == [1]
    assert len(bus.dead_letters) == 0


@pytest.mark.parametrize("concurrent", [False, True])
def test_cancelling_publish_async_propagates(concurrent: bool) -> None:
    bus = EventBus(concurrent=concurrent)
    log: list[str] = []

    async def main() -> None:
        started = asyncio.Event()

        @bus.subscribe
        async def waits(event: Placed) -> None:
            started.set()
            await asyncio.Event().wait()  # until cancelled

        @bus.subscribe
        async def waits_too(event: Placed) -> None:
            await asyncio.Event().wait()

        @bus.subscribe(priority=-1)
        def never(event: Placed) -> None:
            log.append("never")  # pragma: no cover

        task = asyncio.create_task(bus.publish_async(Placed()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())
    assert log == []
    assert len(bus.dead_letters) == 0


def test_cancelled_error_in_concurrent_group_propagates_async() -> None:
    bus = EventBus(concurrent=True)

    @bus.subscribe
    async def cancelled(event: Placed) -> None:
        raise asyncio.CancelledError

    @bus.subscribe
    async def fine(event: Placed) -> None:
        pass

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            await bus.publish_async(Placed())

    asyncio.run(main())
    assert len(bus.dead_letters) == 0
