"""A broker bus for the worker-process tests: ``python -m eventbus worker tests.redis_app:bus``.

Its server and namespace come from the environment (``REDIS_APP_URL``,
``REDIS_APP_NAMESPACE``, ``REDIS_APP_CLAIM_IDLE``); with
``REDIS_APP_METRICS_FILE`` it sets OpenTelemetry's global meter provider up,
as an application would, exporting to that file (one JSON object a line)
every 100 ms, for ``worker --otel-metrics``. Every run of a handler
is recorded in the Redis list ``{prefix}ran`` as ``handler n pid``, before
the handler does what its job's ``kind`` asks, so that a test sees runs
that did not finish.
"""

from __future__ import annotations

import os
import signal
import time

import redis

from eventbus import Event, EventBus, RetryPolicy
from eventbus.redis import RedisBroker

URL = os.environ.get("REDIS_APP_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("REDIS_APP_NAMESPACE", "apps")

broker = RedisBroker(
    URL, namespace=NAMESPACE, claim_idle=float(os.environ.get("REDIS_APP_CLAIM_IDLE", "1"))
)
bus = EventBus(broker=broker, retry=RetryPolicy(max_attempts=3))

if os.environ.get("REDIS_APP_METRICS_FILE"):  # the application's own OpenTelemetry set-up
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    _exported = open(os.environ["REDIS_APP_METRICS_FILE"], "a", encoding="utf-8")  # noqa: SIM115
    metrics.set_meter_provider(
        MeterProvider(
            metric_readers=[
                PeriodicExportingMetricReader(
                    ConsoleMetricExporter(
                        out=_exported, formatter=lambda data: data.to_json(indent=None) + "\n"
                    ),
                    export_interval_millis=100,
                )
            ]
        )
    )
RAN = f"{broker.keys.prefix}ran"
_client = redis.Redis.from_url(URL)


class Job(Event):
    n: int
    kind: str = "ok"  # "ok", "slow" (0.5 s), "poison" (kills its worker)


class JobDone(Event):
    n: int


def _ran(handler: str, n: int) -> None:
    _client.rpush(RAN, f"{handler} {n} {os.getpid()}")


@bus.subscribe(name="jobs.run")
def run(event: Job) -> None:
    _ran("jobs.run", event.n)
    if event.kind == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    if event.kind == "slow":
        time.sleep(0.5)
    bus.publish(JobDone(n=event.n))


@bus.subscribe(name="audit.count")
def count(event: Job) -> None:
    _ran("audit.count", event.n)
