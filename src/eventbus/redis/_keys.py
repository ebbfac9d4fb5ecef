"""The Redis keys of one namespace, all under ``eventbus:{namespace}:``.

- ``...:events``: the stream of every event published (fields
  ``event_type`` and ``payload``, the event's JSON); each handler reads it
  in a consumer group named after the handler.
- ``...:dead-letters``: a hash, letter id -> the letter as JSON;
  ``...:dead-letters:order`` a sorted set of the ids in the order they were
  first added (scored by ``...:dead-letters:seq``, a counter).
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["Keys", "check_namespace"]

_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"namespace must be 1 to 100 letters, digits, '_', '.' or '-', starting with a "
            f'letter or digit, got {namespace!r}; e.g. namespace="shop"'
        )
    return namespace


@dataclasses.dataclass(frozen=True)
class Keys:
    namespace: str

    @property
    def prefix(self) -> str:
        return f"eventbus:{self.namespace}:"

    @property
    def stream(self) -> str:
        return f"{self.prefix}events"

    @property
    def letters(self) -> str:
        return f"{self.prefix}dead-letters"

    @property
    def letters_order(self) -> str:
        return f"{self.prefix}dead-letters:order"

    @property
    def letters_seq(self) -> str:
        return f"{self.prefix}dead-letters:seq"
