"""eventbus.otel: a cascade as one trace of send and process spans, with the SDK's exporter."""

from __future__ import annotations

import asyncio
import collections.abc as c

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus import AlreadyHandled, Event, EventBus, RetryPolicy, signals
from eventbus.otel import Tracing
from eventbus.testing import FakeClock


class OrderPlaced(Event):
    order_id: str


class StockReserved(Event):
    order_id: str


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()  # a private one: the global provider is left alone
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def traced(provider: TracerProvider) -> c.Iterator[tuple[EventBus, Tracing]]:
    bus = EventBus(retry=RetryPolicy(max_attempts=2), clock=FakeClock())
    tracing = Tracing(provider)
    tracing.install(bus)
    yield bus, tracing
    tracing.uninstall(bus)


def spans(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@pytest.mark.parametrize("use_async", [False, True], ids=["publish", "publish_async"])
def test_a_cascade_is_one_trace_of_send_and_process_spans(
    traced: tuple[EventBus, Tracing],
    exporter: InMemorySpanExporter,
    provider: TracerProvider,
    use_async: bool,
) -> None:
    bus, _ = traced
    own = provider.get_tracer("shop")

    @bus.subscribe(name="catalog.reserve")
    async def reserve(event: OrderPlaced) -> None:
        with own.start_as_current_span("reserve in the database"):  # the user's own span
            pass
        bus.publish(StockReserved(order_id=event.order_id))

    @bus.subscribe(name="checkout.charge")
    def charge(event: StockReserved) -> None:
        pass

    placed = OrderPlaced(order_id="o1")
    if use_async:
        asyncio.run(bus.publish_async(placed))
    else:
        bus.publish(placed)
    found = spans(exporter)
    [send_placed] = found[f"send {OrderPlaced.event_type}"]
    [process_placed] = found[f"process {OrderPlaced.event_type}"]
    [database] = found["reserve in the database"]
    [send_reserved] = found[f"send {StockReserved.event_type}"]
    [process_reserved] = found[f"process {StockReserved.event_type}"]
    chain = [send_placed, process_placed, send_reserved, process_reserved]
    assert len({span.context.trace_id for span in [*chain, database]}) == 1  # one trace
    assert parent_of(send_placed) is None
    assert parent_of(process_placed) == send_placed.context.span_id
    assert parent_of(database) == process_placed.context.span_id  # nested under it
    assert parent_of(send_reserved) == process_placed.context.span_id
    assert parent_of(process_reserved) == send_reserved.context.span_id
    assert send_placed.kind == trace.SpanKind.PRODUCER
    assert process_placed.kind == trace.SpanKind.CONSUMER
    assert dict(send_placed.attributes or {}) == {
        "messaging.system": "eventbus",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": OrderPlaced.event_type,
        "messaging.message.id": str(placed.event_id),
        "messaging.message.conversation_id": str(placed.event_id),
    }
    attributes = dict(process_reserved.attributes or {})
    assert attributes["messaging.consumer.group.name"] == "checkout.charge"
    assert attributes["eventbus.attempt"] == 1
    assert attributes["messaging.message.conversation_id"] == str(placed.event_id)


def test_each_attempt_is_a_process_span_and_a_failure_is_recorded_on_it(
    traced: tuple[EventBus, Tracing], exporter: InMemorySpanExporter
) -> None:
    bus, _ = traced

    @bus.subscribe(name="payments.charge")
    def charge(event: OrderPlaced) -> None:
        raise ConnectionError("the gateway does not answer")

    bus.publish(OrderPlaced(order_id="o1"))
    [send] = spans(exporter)[f"send {OrderPlaced.event_type}"]
    attempts = spans(exporter)[f"process {OrderPlaced.event_type}"]
    assert [dict(s.attributes or {})["eventbus.attempt"] for s in attempts] == [1, 2]
    for span in attempts:
        assert parent_of(span) == send.context.span_id
        assert span.status.status_code == trace.StatusCode.ERROR
        assert span.status.description == "ConnectionError: the gateway does not answer"
        [recorded] = span.events
        assert recorded.name == "exception"
        assert dict(recorded.attributes or {})["exception.type"] == "ConnectionError"


def test_a_duplicate_skipped_is_no_error(
    traced: tuple[EventBus, Tracing], exporter: InMemorySpanExporter
) -> None:
    bus, _ = traced

    @bus.subscribe(name="mail.send", idempotent=True)
    def send(event: OrderPlaced) -> None:
        raise AlreadyHandled("another run committed first")  # as an inbox transaction would

    bus.publish(OrderPlaced(order_id="o1"))
    [process] = spans(exporter)[f"process {OrderPlaced.event_type}"]
    assert process.status.status_code == trace.StatusCode.UNSET
    assert dict(process.attributes or {})["eventbus.skipped"] is True


def test_uninstalled_it_leaves_the_bus_as_it_was(provider: TracerProvider) -> None:
    bus = EventBus()
    tracing = Tracing(provider)
    tracing.install(bus)
    with pytest.raises(ValueError, match=r"installed on .* already"):
        tracing.install(bus)
    tracing.uninstall(bus)
    assert bus.middleware == ()
    assert not signals.listened(bus)
    with pytest.raises(ValueError, match="is not installed"):
        tracing.uninstall(bus)


def test_it_remembers_a_bounded_number_of_sent_events(
    traced: tuple[EventBus, Tracing], monkeypatch: pytest.MonkeyPatch
) -> None:
    import eventbus.otel

    bus, tracing = traced
    monkeypatch.setattr(eventbus.otel, "REMEMBERED", 3)
    for number in range(10):
        bus.publish(OrderPlaced(order_id=f"o{number}"))  # no handler: sent only
    assert len(tracing._sent) == 3


# -- across Redis: the producer's context in the stream entry -------------------------------


class Job(Event):
    number: int


class JobDone(Event):
    number: int


def services(
    redis_url: str, provider: TracerProvider, *, parent: bool
) -> tuple[list[EventBus], list[Tracing]]:
    """A publisher and two services, each with a bus and a Tracing of its own (no shared memory)."""
    from eventbus.redis import RedisBroker

    buses = [EventBus(broker=RedisBroker(redis_url, namespace="traced")) for _ in range(3)]
    _, jobs, audit = buses

    @jobs.subscribe(name="jobs.run")
    def run(event: Job) -> None:
        jobs.publish(JobDone(number=event.number))  # written with the acknowledgement

    audit.subscribe(JobDone, name="audit.record")(lambda event: None)
    tracings = [Tracing(provider, parent=parent) for _ in buses]
    for bus, tracing in zip(buses, tracings, strict=True):
        tracing.install(bus)
    return buses, tracings


def work(buses: list[EventBus], tracings: list[Tracing], provider: TracerProvider) -> None:
    from eventbus.redis import Worker

    front, jobs, audit = buses
    workers = [Worker(jobs, block=0.05), Worker(audit, block=0.05)]

    async def main() -> None:
        tasks = [asyncio.create_task(worker.run()) for worker in workers]
        with provider.get_tracer("web").start_as_current_span("POST /jobs"):
            front.publish(Job(number=7))
        for _ in range(3000):
            if workers[0].handled >= 1 and workers[1].handled >= 2:
                break
            await asyncio.sleep(0.01)
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(main())
    finally:
        for bus, tracing in zip(buses, tracings, strict=True):
            tracing.uninstall(bus)
            assert bus.broker is not None
            bus.broker.close()  # type: ignore[attr-defined]


def test_across_redis_with_parent_a_cascade_is_one_trace(
    redis_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    buses, tracings = services(redis_url, provider, parent=True)
    work(buses, tracings, provider)
    found = spans(exporter)
    stream = "eventbus:traced:events"
    [request] = found["POST /jobs"]
    sends = found[f"send {stream}"]
    [process_job] = found[f"process {Job.event_type}"]
    [process_done] = found[f"process {JobDone.event_type}"]
    send_job, send_done = sorted(sends, key=lambda span: span.start_time or 0)
    assert len({s.context.trace_id for s in [request, *sends, process_job, process_done]}) == 1
    assert parent_of(send_job) == request.context.span_id
    assert parent_of(process_job) == send_job.context.span_id  # across the hop
    assert parent_of(send_done) == process_job.context.span_id  # made in the handler
    assert parent_of(process_done) == send_done.context.span_id
    attributes = dict(process_job.attributes or {})
    assert attributes["messaging.system"] == "redis"
    assert attributes["messaging.destination.name"] == stream
    assert attributes["eventbus.event_type"] == Job.event_type  # the stream holds every type
    assert attributes["messaging.consumer.group.name"] == "jobs.run"


def test_across_redis_by_default_a_process_span_links_to_the_send_span(
    redis_url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    buses, tracings = services(redis_url, provider, parent=False)
    work(buses, tracings, provider)
    found = spans(exporter)
    [request] = found["POST /jobs"]
    [process_job] = found[f"process {Job.event_type}"]
    send_job = next(
        s for s in found["send eventbus:traced:events"] if parent_of(s) == request.context.span_id
    )
    assert process_job.context.trace_id != request.context.trace_id  # a trace of its own
    [link] = process_job.links
    assert link.context.span_id == send_job.context.span_id
    assert link.context.trace_id == request.context.trace_id


def test_an_application_without_redis_installed_traces_its_bus() -> None:
    """eventbus.otel and eventbus.prometheus never import redis for a bus that is not on it."""
    import subprocess
    import sys

    script = """
import sys
sys.modules["redis"] = None  # as if redis-py were not installed
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from eventbus import Event, EventBus
from eventbus.otel import Tracing
from eventbus.prometheus import PrometheusMetrics, serve_metrics
class Ping(Event):
    pass
bus = EventBus()
bus.subscribe(Ping, name="ping")(lambda event: None)
tracing = Tracing(TracerProvider())
tracing.install(bus)
bus.publish(Ping())
tracing.uninstall(bus)
served = serve_metrics(bus, port=0)
served.close()
assert "eventbus.redis" not in sys.modules
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


class JobAbandoned(Event):
    number: int


@pytest.mark.parametrize("on_redis", [False, True], ids=["in-process", "worker"])
def test_what_a_give_up_hook_publishes_goes_on_in_the_cascade_s_trace(
    request: pytest.FixtureRequest,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    on_redis: bool,
) -> None:
    """A compensation published by ``on_give_up`` is in the trace of the event given up on."""
    broker = None
    if on_redis:
        from eventbus.redis import RedisBroker

        broker = RedisBroker(request.getfixturevalue("redis_url"), namespace="give-up")
    bus = EventBus(broker=broker, retry=RetryPolicy(max_attempts=1))
    tracing = Tracing(provider, parent=True)
    tracing.install(bus)

    def fail(event: Job) -> None:
        raise RuntimeError("the job cannot run")

    bus.subscribe(
        name="jobs.run",
        on_give_up=lambda letter: bus.publish(JobAbandoned(number=letter.event.number)),  # type: ignore[attr-defined]
    )(fail)
    bus.subscribe(JobAbandoned, name="audit.abandoned")(lambda event: None)
    try:
        if broker is None:
            with provider.get_tracer("web").start_as_current_span("POST /jobs"):
                bus.publish(Job(number=1))
        else:
            from eventbus.redis import Worker

            worker = Worker(bus, block=0.05)

            async def main() -> None:
                running = asyncio.create_task(worker.run())
                with provider.get_tracer("web").start_as_current_span("POST /jobs"):
                    bus.publish(Job(number=1))
                for _ in range(3000):
                    if worker.handled >= 2:
                        break
                    await asyncio.sleep(0.01)
                worker.stop()
                await running

            asyncio.run(main())
    finally:
        tracing.uninstall(bus)
        if broker is not None:
            broker.close()
    found = spans(exporter)
    [web] = found["POST /jobs"]
    [abandoned] = found[f"process {JobAbandoned.event_type}"]
    assert abandoned.context.trace_id == web.context.trace_id
    assert len({span.context.trace_id for span in exporter.get_finished_spans()}) == 1


@pytest.mark.parametrize("parent", [False, True], ids=["link", "parent"])
def test_on_one_worker_a_cascade_it_publishes_and_handles_follows_the_entry(
    redis_url: str, provider: TracerProvider, exporter: InMemorySpanExporter, parent: bool
) -> None:
    """The same process sent the child: its process span still follows the broker's rules."""
    from eventbus.redis import RedisBroker, Worker

    bus = EventBus(broker=RedisBroker(redis_url, namespace="one-worker"))

    @bus.subscribe(name="jobs.run")
    def run(event: Job) -> None:
        bus.publish(JobDone(number=event.number))

    bus.subscribe(JobDone, name="audit.record")(lambda event: None)
    tracing = Tracing(provider, parent=parent)
    tracing.install(bus)
    worker = Worker(bus, block=0.05)

    async def main() -> None:
        task = asyncio.create_task(worker.run())
        bus.publish(Job(number=1))
        for _ in range(3000):
            if worker.handled >= 4:  # 2 entries x 2 groups
                break
            await asyncio.sleep(0.01)
        worker.stop()
        await task

    try:
        asyncio.run(main())
    finally:
        tracing.uninstall(bus)
        assert bus.broker is not None
        bus.broker.close()  # type: ignore[attr-defined]
    found = spans(exporter)
    [process_done] = found[f"process {JobDone.event_type}"]
    [process_job] = found[f"process {Job.event_type}"]
    send_done = next(
        s
        for s in found["send eventbus:one-worker:events"]
        if parent_of(s) == process_job.context.span_id
    )
    attributes = dict(process_done.attributes or {})
    assert attributes["messaging.destination.name"] == "eventbus:one-worker:events"
    assert attributes["eventbus.event_type"] == JobDone.event_type
    if parent:
        assert parent_of(process_done) == send_done.context.span_id
    else:
        assert [link.context.span_id for link in process_done.links] == [send_done.context.span_id]
        assert process_done.context.trace_id != send_done.context.trace_id
