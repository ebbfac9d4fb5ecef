"""Running part of a test as a user whom file permissions stop, even when the tests run as root."""

from __future__ import annotations

import collections.abc as c
import os
import pathlib
import shutil
import tempfile
import traceback
import warnings

__all__ = ["unprivileged"]


def unprivileged(scenario: c.Callable[[pathlib.Path], None]) -> None:
    """Run ``scenario(directory)`` as a user that file permissions apply to.

    That is this process, unless it runs as root (whom permissions do not
    stop): then a forked child that has become ``nobody``. ``directory`` is
    new, the user's own, and removed afterwards.

    The child cannot read the interpreter's own directory when that is
    private to root (pyenv under /root): whatever the scenario imports must
    be imported before it is called.
    """
    directory = pathlib.Path(tempfile.mkdtemp(prefix="eventbus-permissions-"))
    try:
        if not (hasattr(os, "geteuid") and os.geteuid() == 0):
            scenario(directory)
            return
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
            pid = os.fork()
        if pid == 0:  # the child: report by exit status and the pipe, never return into pytest
            status = 1
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                scenario(directory)
                status = 0
            except BaseException:
                os.write(write_end, traceback.format_exc().encode())
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            output = report.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, output
    finally:
        for root, _, _ in os.walk(directory):
            os.chmod(root, 0o755)
        shutil.rmtree(directory)
