"""Names that survive how a program was started: a module's importable name for ``__main__``.

Handler names and event types are recorded in dead letters and read back by
another process (the command line's ``--app``, a worker), which imports the
program's modules by their real names. A module that ran as ``__main__``
must therefore be named as it would be imported.
"""

from __future__ import annotations

import functools
import os
import sys

__all__ = ["importable_module_name"]


def importable_module_name(module: str) -> str:
    """``module``, or for ``"__main__"`` the name the program's file is importable under.

    ``python -m orders`` runs ``orders`` as ``__main__`` and records its real
    name in ``__main__.__spec__``; ``python orders.py`` records none, so the
    name is worked out from the file: its stem, preceded by the names of the
    enclosing package directories (those with an ``__init__.py``). An
    interactive session or a notebook has no file: ``"__main__"`` stays.
    """
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name:  # "package.__main__" for ``python -m package``
        return name
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return module
    return _module_of_file(os.path.abspath(path)) or module


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
