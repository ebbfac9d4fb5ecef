"""A private redis-server, for tests and demos: a free loopback port, a directory of its own.

Runs the ``redis-server`` program (it is not a Python package): the
tests of an application on a broker bus, and the cart example's services
demo, start one with :class:`RedisServer` and stop it after.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
import typing as t

__all__ = ["RedisServer", "RedisServerMissing"]

#: XAUTOCLAIM came with Redis 6.2.
MINIMUM = (6, 2)

#: How long a server may take to start or stop, in seconds (a bounded poll).
PATIENCE = 15.0

INSTALL = (
    "a private Redis needs redis-server {minimum} or newer: install it (Debian/Ubuntu: "
    "`sudo apt-get install redis-server`; macOS: `brew install redis`; in this project's "
    "checkout, `make redis-server`), or set EVENTBUS_REDIS_SERVER to the program's path"
)


class RedisServerMissing(RuntimeError):
    """No usable redis-server: the message says how to install one."""


def program() -> str:
    """The redis-server to run, checked to be new enough."""
    minimum = ".".join(map(str, MINIMUM))
    found = os.environ.get("EVENTBUS_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        raise RedisServerMissing(INSTALL.format(minimum=minimum))
    version = subprocess.run(
        [found, "--version"], capture_output=True, text=True, timeout=PATIENCE, check=False
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)", version)
    if match is None or (int(match[1]), int(match[2])) < MINIMUM:
        raise RedisServerMissing(
            f"{found} is not redis-server {minimum} or newer ({version.strip()!r}); "
            + INSTALL.format(minimum=minimum)
        )
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One private redis-server process in ``directory`` (made if missing), on a free loopback port.

    ``start()``, ``stop()`` (SIGTERM), ``kill()`` (SIGKILL, as a crash),
    ``restart()`` on the same port with the same data, ``url``; use it as a
    context manager to start and stop it. Append-only persistence with an
    fsync per write, so that a restart keeps everything a client was told
    was written (the durability the broker's guarantees assume). The
    program is ``$EVENTBUS_REDIS_SERVER`` or ``redis-server`` on the PATH,
    6.2 or newer; :class:`RedisServerMissing` says how to install it.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.program = program()
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        for _ in range(5):  # another process may take the free port first
            log = self.directory / "redis.log"
            log.write_text("")
            options = {
                "bind": "127.0.0.1",
                "port": str(self.port),
                "dir": str(self.directory),
                "save": "",
                "appendonly": "yes",
                "appendfsync": "always",
                "logfile": str(log),
                "protected-mode": "no",
            }
            arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
            self.process = subprocess.Popen(
                [self.program, *arguments],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            if self._answers():
                return
            self._reap()
            if "Address already in use" not in log.read_text():
                raise RuntimeError(f"redis-server did not start:\n{log.read_text()[-2000:]}")
            self.port = free_port()
        raise RuntimeError("redis-server found no free port in five tries")

    def stop(self) -> None:
        """Stop the server as an operator would (SIGTERM: it finishes writing first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        self._reap()

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> t.Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _reap(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=PATIENCE)
            self.process = None

    def _answers(self) -> bool:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False
