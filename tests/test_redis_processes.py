"""Worker processes on the tests' private redis-server: sharing, SIGKILL, poison, SIGTERM.

Each test starts ``python -m eventbus worker tests.redis_app:bus`` processes
and checks, from Redis, every run of every handler (``tests.redis_app``
records each run before doing its job). Waits are bounded polls.
"""

from __future__ import annotations

import collections.abc as c
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import typing as t
import urllib.request

import pytest
import redis

from eventbus import EventBus, RetryPolicy
from eventbus.redis import RedisBroker

PATIENCE = 60.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class App:
    """The test app's bus in this process (to publish), and its worker processes."""

    def __init__(self, url: str, namespace: str, claim_idle: float, logs: pathlib.Path) -> None:
        self.url, self.namespace, self.claim_idle = url, namespace, claim_idle
        self.logs = logs
        self.broker = RedisBroker(url, namespace=namespace, claim_idle=claim_idle)
        self.bus = EventBus(broker=self.broker, retry=RetryPolicy(max_attempts=3))
        self.client = redis.Redis.from_url(url)
        self.workers: list[subprocess.Popen[bytes]] = []
        from tests import redis_app  # the event classes, as the workers have them

        self.Job = redis_app.Job
        self.JobDone = redis_app.JobDone

    def worker(self, *options: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "REDIS_APP_URL": self.url,
            "REDIS_APP_NAMESPACE": self.namespace,
            "REDIS_APP_CLAIM_IDLE": str(self.claim_idle),
            "PYTHONPATH": ROOT,
            **(env or {}),
        }
        log = self.logs / f"worker-{len(self.workers)}.log"
        with log.open("wb") as output:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", "eventbus", "worker", "tests.redis_app:bus", *options],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=output,
            )
        self.workers.append(process)
        return process

    def runs(self, handler: str | None = None) -> list[tuple[str, int, int]]:
        """Every run recorded: (handler, job number, pid)."""
        raw = t.cast(list[bytes], self.client.lrange(f"{self.broker.keys.prefix}ran", 0, -1))
        parsed = [(h, int(n), int(pid)) for h, n, pid in (r.decode().split() for r in raw)]
        return [run for run in parsed if handler is None or run[0] == handler]

    def pending(self, group: str) -> int:
        try:
            summary: t.Any = self.client.xpending(self.broker.keys.stream, group)
        except redis.ResponseError:  # no such group yet
            return -1
        return int(summary["pending"])

    def acknowledged_all(self, group: str, count: int) -> bool:
        """``group`` delivered ``count`` entries at least and holds none pending."""
        try:
            groups: t.Any = self.client.xinfo_groups(self.broker.keys.stream)
        except redis.ResponseError:
            return False
        for info in groups:
            if info["name"].decode() == group:
                read = info.get("entries-read") or 0
                return bool(info["pending"] == 0 and read >= count)
        return False

    def stop(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=PATIENCE)
        self.broker.close()
        self.client.close()


def until(condition: c.Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"not reached in {PATIENCE}s: {what}"
        time.sleep(0.02)


@pytest.fixture
def app(redis_url: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> c.Iterator[App]:
    made = App(redis_url, namespace="procs", claim_idle=1.0, logs=tmp_path)
    try:
        yield made
    finally:
        made.stop()
        for log in sorted(tmp_path.glob("worker-*.log")):  # shown by pytest when a test fails
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")


def test_many_workers_share_the_work_and_every_job_runs(app: App) -> None:
    for _ in range(3):
        app.worker("--concurrency", "4")
    for n in range(300):
        app.bus.publish(app.Job(n=n))
    until(lambda: app.acknowledged_all("jobs.run", 300 + 300), "every job and child acked")
    until(lambda: app.acknowledged_all("audit.count", 600), "audit acked everything")
    runs = app.runs("jobs.run")
    assert sorted(n for _, n, _ in runs) == list(range(300))  # each once: nobody died
    assert len({pid for _, _, pid in runs}) >= 2, "one worker did everything"
    assert sorted(n for _, n, _ in app.runs("audit.count")) == list(range(300))
    assert len(app.bus.dead_letters) == 0


def test_a_worker_killed_mid_stream_loses_nothing(app: App) -> None:
    doomed = app.worker("--concurrency", "4", "--handlers", "jobs.*")
    for n in range(20):
        app.bus.publish(app.Job(n=n, kind="slow"))
    until(lambda: len(app.runs("jobs.run")) >= 4, "the first worker started some jobs")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=PATIENCE)
    app.worker("--concurrency", "8", "--handlers", "jobs.*")
    until(lambda: app.acknowledged_all("jobs.run", 40), "every job and child acked")
    handled = {n for _, n, _ in app.runs("jobs.run")}
    assert handled == set(range(20))  # at least once each, the killed ones again
    assert len(app.bus.dead_letters) == 0
    # The killed attempts published nothing: one child per job, from its one successful run.
    stream = t.cast(list[t.Any], app.client.xrange(app.broker.keys.stream))
    done_type = app.JobDone.event_type.encode()
    children = [fields for _, fields in stream if fields[b"event_type"] == done_type]
    done = sorted(json.loads(fields[b"payload"])["n"] for fields in children)
    assert done == list(range(20))


def test_garbage_entries_become_dead_letters_and_the_worker_goes_on(app: App) -> None:
    worker = app.worker("--handlers", "jobs.*")
    stream = app.broker.keys.stream
    job_type = app.Job.event_type
    garbage: list[dict[str, str]] = [
        {"event_type": "no.such.event", "payload": "{}"},
        {"event_type": job_type, "payload": "not json"},
        {"event_type": job_type, "payload": '{"n": "seven"}'},
        {"junk": "1"},
    ]
    for fields in garbage:
        app.client.xadd(stream, fields)  # type: ignore[arg-type]
    app.bus.publish(app.Job(n=7))
    until(lambda: app.acknowledged_all("jobs.run", 4 + 1 + 1), "the garbage, the job, its child")
    assert worker.poll() is None  # still running
    assert [n for _, n, _ in app.runs("jobs.run")] == [7]
    letters = list(app.bus.dead_letters)
    assert len(letters) == 4
    assert {letter.error_type for letter in letters} == {
        "eventbus.redis._worker.UnreadableEntryError"
    }
    assert {letter.handler for letter in letters} == {"jobs.run"}
    assert {letter.event_type for letter in letters} == {"no.such.event", job_type, "?"}


def test_a_poison_event_that_kills_every_worker_ends_as_one_dead_letter(app: App) -> None:
    app.bus.publish(app.Job(n=1, kind="poison"))
    app.bus.publish(app.Job(n=2))
    deadline = time.monotonic() + PATIENCE
    while len(app.bus.dead_letters) == 0:
        assert time.monotonic() < deadline, "the poison job was never dead-lettered"
        # One at a time: what runs beside a poison in its worker dies with it, a failed
        # attempt of its own (an innocent job would lose attempts too).
        process = app.worker("--handlers", "jobs.*", "--concurrency", "1")
        while process.poll() is None and len(app.bus.dead_letters) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    until(lambda: app.acknowledged_all("jobs.run", 3), "the job, the poison and a child")
    [letter] = app.bus.dead_letters
    assert letter.handler == "jobs.run"
    assert letter.attempts == 3
    assert letter.error_type == "eventbus.redis._worker.WorkerLostError"
    poison_runs = [run for run in app.runs("jobs.run") if run[1] == 1]
    assert len(poison_runs) == 3  # exactly max_attempts runs, each in a worker it killed
    assert len({pid for _, _, pid in poison_runs}) == 3


def test_sigterm_finishes_what_is_in_flight_and_exits_0(app: App) -> None:
    worker = app.worker("--concurrency", "4", "--handlers", "jobs.*")
    for n in range(4):
        app.bus.publish(app.Job(n=n, kind="slow"))
    until(lambda: len(app.runs("jobs.run")) == 4, "four slow jobs running")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=PATIENCE) == 0
    assert app.pending("jobs.run") == 0  # the four finished and were acknowledged
    assert len(app.runs("jobs.run")) == 4
    stream = t.cast(list[t.Any], app.client.xrange(app.broker.keys.stream))
    assert len(stream) == 8  # the jobs and their children


def test_a_worker_serves_its_metrics_on_the_port_its_command_line_names(app: App) -> None:
    """What ``curl http://127.0.0.1:PORT/metrics`` shows of a worker process."""
    from eventbus.testing._redis_server import free_port

    port = free_port()
    worker = app.worker("--handlers", "jobs.*", "--metrics-port", str(port))
    for n in range(5):
        app.bus.publish(app.Job(n=n))
    until(lambda: app.acknowledged_all("jobs.run", 5), "jobs acked")

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return str(reply.read().decode())
        except OSError:
            return ""  # not serving yet

    until(lambda: "eventbus_worker_entries_total 10.0" in scrape(), "metrics served")  # 5+5
    text = scrape()
    job, done = app.Job.event_type, app.JobDone.event_type
    for series in (
        f'eventbus_handled_total{{event_type="{job}",handler="jobs.run",outcome="success"}} 5.0',
        f'eventbus_published_total{{event_type="{done}"}} 5.0',  # the jobs' children
        f'eventbus_handler_duration_seconds_count{{event_type="{job}",handler="jobs.run",'
        'outcome="success"} 5.0',
        'eventbus_group_pending{handler="jobs.run",namespace="procs"} 0.0',
        'eventbus_reclaimed_entries_total{handler="jobs.run"} 0.0',
        'eventbus_broker_up{namespace="procs"} 1.0',
    ):
        assert series in text, text
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=PATIENCE) == 0


def test_a_worker_reports_through_opentelemetry_with_otel_metrics(
    app: App, tmp_path: pathlib.Path
) -> None:
    """``--otel-metrics``: the application's meter provider exports the bus's, the broker's
    and the worker's metrics; the last counts are flushed when it stops."""
    exported = tmp_path / "metrics.jsonl"
    worker = app.worker(
        "--handlers", "jobs.*", "--otel-metrics", env={"REDIS_APP_METRICS_FILE": str(exported)}
    )
    for n in range(5):
        app.bus.publish(app.Job(n=n))
    until(lambda: app.acknowledged_all("jobs.run", 5), "jobs acked")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=PATIENCE) == 0
    points: dict[str, list[dict[str, t.Any]]] = {}
    for line in exported.read_text().splitlines():
        for resource in json.loads(line)["resource_metrics"]:
            for scope in resource["scope_metrics"]:
                for metric in scope["metrics"]:
                    points[metric["name"]] = metric["data"]["data_points"]  # the latest
    job = app.Job.event_type

    def value(name: str, **attributes: str) -> t.Any:
        for point in points[name]:
            if point["attributes"] == attributes:
                return point.get("value", point.get("count"))
        raise AssertionError(f"no {name} {attributes} in {points.get(name)}")

    assert value("eventbus.handled", event_type=job, handler="jobs.run", outcome="success") == 5
    assert value("eventbus.published", event_type=app.JobDone.event_type) == 5
    assert value("eventbus.worker.entries") == 10  # the 5 jobs and their 5 children
    assert value("eventbus.handler.duration", event_type=job, handler="jobs.run",
                 outcome="success") == 5  # fmt: skip
    assert value("eventbus.broker.up", namespace=app.namespace) == 1
    assert value("eventbus.group.pending", namespace=app.namespace, handler="jobs.run") == 0


def test_two_workers_given_one_metrics_port_the_second_says_so(app: App) -> None:
    from eventbus.testing._redis_server import free_port

    port = str(free_port())
    first = app.worker("--handlers", "jobs.*", "--metrics-port", port)
    until(lambda: app.pending("jobs.run") == 0, "the first worker started")
    second = subprocess.run(
        [sys.executable, "-m", "eventbus", "worker", "tests.redis_app:bus", "--metrics-port", port],
        cwd=ROOT,
        env={**os.environ, "REDIS_APP_URL": app.url, "REDIS_APP_NAMESPACE": app.namespace,
             "REDIS_APP_CLAIM_IDLE": "1.0", "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in second.stderr
    assert "give each worker on a machine a port of its own" in second.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=PATIENCE) == 0


def test_handlers_split_the_handlers_between_workers(app: App) -> None:
    jobs = app.worker("--handlers", "jobs.*")
    audit = app.worker("--handlers", "audit.*")
    for n in range(10):
        app.bus.publish(app.Job(n=n))
    until(lambda: app.acknowledged_all("jobs.run", 20), "jobs acked")
    until(lambda: app.acknowledged_all("audit.count", 20), "audit acked")
    assert {pid for _, _, pid in app.runs("jobs.run")} == {jobs.pid}
    assert {pid for _, _, pid in app.runs("audit.count")} == {audit.pid}


def test_a_worker_of_a_bus_without_a_broker_is_refused() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "eventbus", "worker", "tests.cli_app:bus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    assert run.returncode == 2
    assert "is a bus without a broker" in run.stderr


def test_a_worker_survives_redis_restarting_and_loses_nothing_redis_kept(
    app: App, redis_server: t.Any
) -> None:
    app.worker("--concurrency", "4")
    for n in range(20):
        app.bus.publish(app.Job(n=n))
    until(lambda: app.acknowledged_all("jobs.run", 40), "the first jobs acked")
    redis_server.restart()  # append-only with fsync always: it keeps every entry
    for n in range(20, 40):
        app.bus.publish(app.Job(n=n))
    until(lambda: app.acknowledged_all("jobs.run", 80), "the jobs after the restart acked")
    until(lambda: app.acknowledged_all("audit.count", 80), "audit acked everything")
    assert {n for _, n, _ in app.runs("jobs.run")} == set(range(40))
    assert {n for _, n, _ in app.runs("audit.count")} == set(range(40))


def cli(app: App, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "REDIS_APP_URL": app.url,
        "REDIS_APP_NAMESPACE": app.namespace,
        "PYTHONPATH": ROOT,
    }
    return subprocess.run(
        [sys.executable, "-m", "eventbus", "dead-letters", *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )


def test_the_command_line_reaches_a_brokers_letters_by_app_or_by_url(app: App) -> None:
    from eventbus import DeadLetter

    event = app.Job(n=7)
    letter = DeadLetter.from_exception(
        event, "jobs.run", 3, RuntimeError("carrier down"), failed_at=event.occurred_at
    )
    app.broker.dead_letters.add(letter)
    by_app = cli(app, "list", "--app", "tests.redis_app:bus")
    assert by_app.returncode == 0, by_app.stderr
    assert str(letter.id)[:8] in by_app.stdout
    assert "carrier down" in by_app.stdout
    by_url = cli(app, "list", "--json", "--redis", app.url, "--namespace", app.namespace)
    assert by_url.returncode == 0, by_url.stderr
    assert '"handler": "jobs.run"' in by_url.stdout
    nowhere = cli(app, "list")
    assert nowhere.returncode == 2
    assert "which store?" in nowhere.stderr

    redriven = cli(app, "redrive", "--all", "--app", "tests.redis_app:bus")
    assert redriven.returncode == 0, redriven.stdout + redriven.stderr
    assert len(app.broker.dead_letters) == 0
    assert [run[:2] for run in app.runs()] == [("jobs.run", 7)]  # run by the command itself
    stream = t.cast(list[t.Any], app.client.xrange(app.broker.keys.stream))
    assert [fields[b"event_type"] for _, fields in stream] == [app.JobDone.event_type.encode()]


def test_groups_shows_each_handlers_pending_entries_and_lag(app: App) -> None:
    def groups(*options: str) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "REDIS_APP_URL": app.url, "PYTHONPATH": ROOT}
        environment["REDIS_APP_NAMESPACE"] = app.namespace
        return subprocess.run(
            [sys.executable, "-m", "eventbus", "groups", "tests.redis_app:bus", *options],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=PATIENCE,
            check=False,
        )

    before = groups()
    assert before.returncode == 0, before.stderr
    assert "no consumer groups" in before.stdout
    worker = app.worker("--handlers", "jobs.*")
    until(lambda: app.pending("audit.count") == 0, "the worker made every handler's group")
    for n in range(5):
        app.bus.publish(app.Job(n=n))
    until(lambda: app.acknowledged_all("jobs.run", 10), "jobs acked")
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=PATIENCE)
    shown = groups("--json")
    assert shown.returncode == 0, shown.stderr

    by_handler = {group["handler"]: group for group in json.loads(shown.stdout)}
    assert by_handler["jobs.run"]["pending"] == 0
    assert by_handler["jobs.run"]["lag"] == 0
    assert by_handler["audit.count"]["lag"] == 10  # no audit worker ran: all ten wait
    assert by_handler["audit.count"]["consumers"] == 0
    table = groups()
    assert "audit.count" in table.stdout
    assert "LAG" in table.stdout
