"""The outbox across processes: SIGKILL between commit and relay, and of a relay mid-stream.

A writer process commits its orders with their events in the outbox and
is killed before any relay ran; relays (``python -m eventbus relay``) move
the rows to the tests' private redis-server, one of them killed mid-way;
a worker with ``--outbox`` relays and handles. Everything is read back
from Redis. Waits are bounded polls.
"""

from __future__ import annotations

import collections.abc as c
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import typing as t

import pytest
import redis

PATIENCE = 60.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITER = textwrap.dedent(
    """\
    import os, signal, sqlite3, sys
    from eventbus import SQLiteOutbox
    from tests.redis_app import Job

    path, count = sys.argv[1], int(sys.argv[2])
    outbox = SQLiteOutbox(path)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS orders (n INTEGER PRIMARY KEY)")
    for n in range(count):
        with db:  # one request: the order and its event, one commit
            db.execute("INSERT INTO orders VALUES (?)", (n,))
            outbox.add(db, Job(n=n))
    try:
        with db:  # a request that fails: its order and its event roll back together
            db.execute("INSERT INTO orders VALUES (?)", (count,))
            outbox.add(db, Job(n=count))
            raise RuntimeError("declined")
    except RuntimeError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)  # dies after committing, before any relay ran
    """
)


class Processes:
    def __init__(self, url: str, namespace: str, logs: pathlib.Path) -> None:
        self.url, self.namespace, self.logs = url, namespace, logs
        self.client = redis.Redis.from_url(url)
        self.stream = f"eventbus:{namespace}:events"
        self.started: list[subprocess.Popen[bytes]] = []
        self.environment = {
            **os.environ,
            "REDIS_APP_URL": url,
            "REDIS_APP_NAMESPACE": namespace,
            "PYTHONPATH": ROOT,
        }

    def start(self, *command: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"process-{len(self.started)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, *command],
                cwd=ROOT,
                env=self.environment,
                stdout=subprocess.DEVNULL,
                stderr=output,
            )
        self.started.append(process)
        return process

    def jobs(self) -> list[int]:
        """The job numbers on the stream, in stream order (JobDone children left out)."""
        entries = t.cast(list[t.Any], self.client.xrange(self.stream))
        return [
            json.loads(fields[b"payload"])["n"]
            for _, fields in entries
            if fields[b"event_type"].decode().endswith(".Job")
        ]

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=PATIENCE)
        self.client.close()


def until(condition: c.Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"not reached in {PATIENCE}s: {what}"
        time.sleep(0.02)


@pytest.fixture
def procs(redis_url: str, tmp_path: pathlib.Path) -> c.Iterator[Processes]:
    made = Processes(redis_url, "outbox", tmp_path)
    try:
        yield made
    finally:
        made.stop()
        for log in sorted(tmp_path.glob("process-*.log")):  # shown by pytest when a test fails
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")


def written(procs: Processes, database: pathlib.Path, count: int) -> None:
    writer = procs.start("-c", WRITER, str(database), str(count))
    assert writer.wait(timeout=PATIENCE) == -signal.SIGKILL
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM orders").fetchone() == (count,)
        assert db.execute("SELECT count(*) FROM eventbus_outbox").fetchone() == (count,)
    db.close()


def test_events_committed_by_a_killed_process_are_relayed_once_and_in_order(
    procs: Processes, tmp_path: pathlib.Path
) -> None:
    database = tmp_path / "shop.db"
    written(procs, database, 50)
    relay = procs.start("-m", "eventbus", "relay", "tests.redis_app:bus", "--outbox", str(database))
    until(lambda: len(procs.jobs()) >= 50, "the 50 events on the stream")
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=PATIENCE) == 0
    assert procs.jobs() == list(range(50))  # once each, in commit order; the rollback never
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM eventbus_outbox").fetchone() == (0,)
    db.close()


def test_a_relay_killed_mid_stream_loses_nothing_and_the_next_takes_over(
    procs: Processes, tmp_path: pathlib.Path
) -> None:
    database = tmp_path / "shop.db"
    written(procs, database, 600)
    relay = ("-m", "eventbus", "relay", "tests.redis_app:bus", "--outbox", str(database))
    first = procs.start(*relay, "--batch", "10", "--lease", "1")
    until(lambda: len(procs.jobs()) >= 100, "the first relay under way")
    first.kill()
    first.wait(timeout=PATIENCE)
    before = len(procs.jobs())
    assert before < 600, "the first relay finished before it was killed: kill it sooner"
    second = procs.start(*relay, "--batch", "10", "--lease", "1")
    until(lambda: set(procs.jobs()) == set(range(600)), "every event on the stream")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=PATIENCE) == 0
    jobs = procs.jobs()
    assert list(dict.fromkeys(jobs)) == list(range(600))  # first copies in commit order
    assert len(jobs) - 600 <= 10  # sent twice: at most the killed relay's one pass
    assert 600 not in jobs  # the rolled-back order's event


def test_a_worker_with_an_outbox_relays_and_handles(
    procs: Processes, tmp_path: pathlib.Path
) -> None:
    database = tmp_path / "shop.db"
    written(procs, database, 20)
    worker = procs.start(
        "-m", "eventbus", "worker", "tests.redis_app:bus", "--outbox", str(database)
    )
    ran = f"eventbus:{procs.namespace}:ran"

    def handled() -> list[int]:
        runs = t.cast(list[bytes], procs.client.lrange(ran, 0, -1))
        return sorted(int(r.split()[1]) for r in runs if r.startswith(b"jobs.run "))

    until(lambda: handled() == list(range(20)), "the 20 jobs handled by the worker")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=PATIENCE) == 0
    assert handled() == list(range(20))  # each once (the worker trims the stream it read)
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM eventbus_outbox").fetchone() == (0,)
    db.close()
