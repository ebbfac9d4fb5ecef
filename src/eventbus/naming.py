"""Names that survive how a program was started: a module's importable name for ``__main__``.

Handler names and event types are recorded in dead letters and read back by
another process (the command line's ``--app``, a worker), which imports the
program's modules by their real names. A module that ran as ``__main__``
must therefore be named as it would be imported.
"""

from __future__ import annotations

import collections.abc as c
import functools
import os
import sys
import types
import typing as t

__all__ = ["importable_module_name", "namespace_of_caller"]

#: The names a program's own file runs under: as started, and re-imported in a
#: multiprocessing child started by spawn or forkserver.
MAIN_MODULES: t.Final = frozenset({"__main__", "__mp_main__"})


def importable_module_name(module: str, namespace: c.Mapping[str, t.Any] | None = None) -> str:
    """``module``, or for a program's own file the name it is importable under.

    ``namespace`` is the globals of the code that ran as ``module`` (a
    function's ``__globals__``); by default, that of ``sys.modules[module]``,
    which is another module when a tool runs the program (``python -m
    cProfile orders.py``). ``python -m orders`` records the real name in
    ``__spec__``; ``python orders.py`` records none, so the name is worked
    out from ``__file__``: its stem, preceded by the names of the enclosing
    package directories (those with an ``__init__.py``). An interactive
    session or a notebook has no file: ``"__main__"`` stays.
    """
    if module not in MAIN_MODULES:
        return module
    if namespace is None:
        namespace = getattr(sys.modules.get(module), "__dict__", None) or {}
    name = getattr(namespace.get("__spec__"), "name", None)
    if isinstance(name, str) and name and name not in MAIN_MODULES:
        return name  # "package.__main__" for ``python -m package``
    path = namespace.get("__file__")
    if not isinstance(path, str) or not path.endswith(".py"):
        return module
    return _module_of_file(os.path.abspath(path)) or module


def namespace_of_caller(module: str) -> c.Mapping[str, t.Any] | None:
    """The globals of the innermost calling frame that runs as ``module`` (a class body's)."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == module:
            return frame.f_globals
        frame = frame.f_back
    return None


@functools.cache
def _module_of_file(path: str) -> str | None:
    directory, filename = os.path.split(path)
    parts = [filename.removesuffix(".py")]
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        directory, package = os.path.split(directory)
        if not package:
            break
        parts.append(package)
    if not all(part.isidentifier() for part in parts):
        return None  # not importable under any name (a file like my-script.py)
    return ".".join(reversed(parts))
