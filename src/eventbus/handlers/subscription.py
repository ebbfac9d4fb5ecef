"""Subscription: a handler checked once, at registration, and everything decided about it.

Every question the publish path would otherwise ask per event (which event
classes, sync or async, which retry policy, what to call it in a log line) is
answered here, when the handler is subscribed, and any mistake is a
``TypeError`` naming the handler and the fix.
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import functools
import inspect
import sys
import types
import typing as t

from ..events import Event
from ..naming import importable_module_name
from ..retry import MAX_DELAY, RetryPolicy, finite_non_negative

if t.TYPE_CHECKING:
    from ..dead_letters import DeadLetter

__all__ = ["Handler", "Subscription"]

E_contra = t.TypeVar("E_contra", bound=Event, contravariant=True)

#: A handler: a function (or any callable) taking one event, sync or async.
Handler: t.TypeAlias = c.Callable[[E_contra], object]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Subscription:
    """One handler registered for one or more event classes.

    ``event_types`` are the classes the handler was registered for (each
    also delivers its subclasses). ``sequence`` is the registration order,
    which breaks ties between handlers of equal ``priority`` (higher runs
    first).
    """

    handler: c.Callable[[t.Any], object]
    name: str
    event_types: tuple[type[Event], ...]
    priority: int
    retry: RetryPolicy | None
    run_in_thread: bool
    is_async: bool
    sequence: int
    timeout: float | None = None
    idempotent: bool = False
    on_give_up: c.Callable[[DeadLetter], object] | None = None

    @classmethod
    def create(
        cls,
        handler: object,
        event_type: object | None,
        *,
        priority: int,
        retry: RetryPolicy | None,
        run_in_thread: bool,
        sequence: int,
        timeout: float | None = None,
        caller_locals: c.Mapping[str, object] | None = None,
        name: str | None = None,
        idempotent: bool = False,
        on_give_up: object | None = None,
    ) -> Subscription:
        """Check ``handler`` and its options; raise ``TypeError`` naming the fix."""
        if not callable(handler):
            raise TypeError(
                f"cannot subscribe {handler!r}: it is not callable; "
                "subscribe a function (or method) that takes one event"
            )
        if name is None:
            name = handler_name(handler)
        elif not isinstance(name, str) or not name.strip() or name != name.strip():
            raise TypeError(
                f"cannot subscribe {handler_name(handler)}: name must be a non-empty string "
                f'without surrounding spaces, got {name!r}; e.g. name="orders.ship"'
            )
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"cannot subscribe {name}: priority must be an int, got {priority!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(
                f"cannot subscribe {name}: retry must be a RetryPolicy, got {retry!r}; "
                "write retry=RetryPolicy(max_attempts=3)"
            )
        if not isinstance(idempotent, bool):
            raise TypeError(
                f"cannot subscribe {name}: idempotent must be True or False, got {idempotent!r}"
            )
        if on_give_up is not None:
            if not callable(on_give_up):
                raise TypeError(
                    f"cannot subscribe {name}: on_give_up must be a function taking the dead "
                    f"letter, got {on_give_up!r}"
                )
            if _is_async(on_give_up) or _is_generator(on_give_up):
                raise TypeError(
                    f"cannot subscribe {name}: on_give_up must be a plain (sync) function; it "
                    "runs where the letter is made, and what it publishes is written with the "
                    "letter: make it `def`, and publish from it what the async work needs"
                )
        is_async = _is_async(handler)
        if run_in_thread and is_async:
            raise TypeError(
                f"cannot subscribe {name} with run_in_thread=True: it is async and already "
                "runs without blocking the event loop; drop run_in_thread"
            )
        if timeout is not None:
            if not finite_non_negative(timeout) or timeout > MAX_DELAY:
                raise TypeError(
                    f"cannot subscribe {name}: timeout must be a number of seconds from 0 to "
                    f"MAX_DELAY ({MAX_DELAY:g}), got {timeout!r}"
                )
            if not is_async:
                raise TypeError(
                    f"cannot subscribe {name} with timeout={timeout}: it is a sync function, "
                    "and Python cannot interrupt a running sync function, so the timeout could "
                    "not be honoured; make the handler `async def`, or drop timeout and bound "
                    "the blocking call itself (e.g. a socket timeout)"
                )
        if _is_generator(handler):
            raise TypeError(
                f"cannot subscribe {name}: it is a generator function, so calling it would "
                "never run its body; use return instead of yield"
            )
        annotation = _first_parameter_annotation(
            handler, name, caller_locals, required=event_type is None
        )
        if event_type is None:
            if annotation is inspect.Parameter.empty:
                raise TypeError(
                    f"cannot subscribe {name}: its first parameter has no annotation, so the "
                    f"event class is unknown; annotate it (def handler(event: MyEvent)) or "
                    f"name the class: @bus.subscribe(MyEvent)"
                )
            event_types = _event_classes(annotation, name)
        else:
            event_types = _event_classes(event_type, name, explicit=True)
            for explicit in event_types:
                if not _accepts(annotation, explicit):
                    raise TypeError(
                        f"cannot subscribe {name} to {explicit.__qualname__}: its first "
                        f"parameter is annotated {_describe(annotation)}, which "
                        f"{explicit.__qualname__} events are not; fix the annotation or "
                        "the class passed to subscribe()"
                    )
        return cls(
            handler=handler,
            name=name,
            event_types=event_types,
            priority=priority,
            retry=retry,
            run_in_thread=run_in_thread,
            is_async=is_async,
            sequence=sequence,
            timeout=float(timeout) if timeout is not None else None,
            idempotent=idempotent,
            on_give_up=t.cast("c.Callable[[DeadLetter], object] | None", on_give_up),
        )

    def receives(self, event_class: type[Event]) -> bool:
        """Whether events of ``event_class`` are delivered to this subscription."""
        return issubclass(event_class, self.event_types)


def handler_name(handler: object) -> str:
    """A readable qualified name: ``module.function``, ``module.Class.method``.

    The module is named as it is imported, not as it was started: a handler
    of a script run as ``python orders.py`` or ``python -m orders`` is
    ``orders.ship``, not ``__main__.ship``, so that a letter it leaves can be
    redriven by a process that imports ``orders`` (the command line's
    ``--app orders:bus``). See :func:`importable_module_name`.
    """
    if isinstance(handler, functools.partial):
        return f"functools.partial({handler_name(handler.func)})"
    qualname = getattr(handler, "__qualname__", None)
    if not isinstance(qualname, str):  # a callable instance
        kind = type(handler)
        return f"{importable_module_name(kind.__module__)}.{kind.__qualname__}()"
    module = getattr(handler, "__module__", None)
    if not module:
        return f"?.{qualname}"
    # A function knows the globals it was defined in, even when a tool ran its file.
    function = getattr(handler, "__func__", handler)
    namespace = getattr(function, "__globals__", None)
    return f"{importable_module_name(module, namespace)}.{qualname}"


def caller_namespace() -> dict[str, object] | None:
    """The local names of the first frame outside eventbus, to resolve string annotations.

    A handler defined inside a function, under ``from __future__ import
    annotations``, names classes that only that function's locals know.
    """
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("eventbus."):
        frame = frame.f_back  # type: ignore[assignment]
    return dict(frame.f_locals) if frame is not None else None


def _is_generator(handler: object) -> bool:
    """A generator function, or a callable instance whose ``__call__`` is one."""
    try:
        if inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler):
            return True
    except TypeError:  # a Mock(spec=function): its code flags are mocks too
        return False
    if inspect.isroutine(handler) or isinstance(handler, type | functools.partial):
        return False
    call = getattr(type(handler), "__call__", None)  # noqa: B004
    return inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call)


def _is_async(handler: object) -> bool:
    try:
        if inspect.iscoroutinefunction(handler):
            return True
    except TypeError:  # a Mock(spec=function) of a sync function: its code flags are mocks
        return False
    call = getattr(type(handler), "__call__", None)  # noqa: B004  # callable instances
    return not inspect.isroutine(handler) and inspect.iscoroutinefunction(call)


def _first_parameter_annotation(
    handler: object, name: str, caller_locals: c.Mapping[str, object] | None, *, required: bool
) -> object:
    """The first parameter's annotation, evaluated if it was a string.

    When the event class was given explicitly (``required=False``), an
    annotation that cannot be evaluated (a name imported under
    ``TYPE_CHECKING``) is left unchecked rather than refused.
    """
    try:
        signature = inspect.signature(handler, eval_str=True, locals=caller_locals)  # type: ignore[arg-type]
    except NameError as error:
        if not required:
            signature = inspect.signature(handler)  # type: ignore[arg-type]
            return _check_parameters(signature, name)
        raise TypeError(
            f"cannot subscribe {name}: its annotation names {error.name!r}, which is not "
            f"defined where the handler is; import it there, or name the class explicitly: "
            f"@bus.subscribe(MyEvent)"
        ) from None
    except (TypeError, ValueError):
        return inspect.Parameter.empty  # builtins without signatures: nothing to check
    return _check_parameters(signature, name)


def _check_parameters(signature: inspect.Signature, name: str) -> object:
    """Refuse a signature that cannot take exactly one event; return the event's annotation."""
    params = list(signature.parameters.values())
    positional_kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    variadic_kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    event_param = next((p for p in params if p.kind in positional_kinds), None)
    if event_param is not None and event_param.name == "self":
        raise TypeError(
            f"cannot subscribe {name}: its first parameter is 'self', so it is a function "
            "from a class body; subscribe the bound method of an instance instead: "
            "bus.subscribe(obj.method)"
        )
    if event_param is None and not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        raise TypeError(
            f"cannot subscribe {name}: it takes no positional argument, but handlers are "
            "called with the event; add one: def handler(event: MyEvent)"
        )
    extra = [
        p.name
        for p in params
        if p is not event_param
        and p.default is inspect.Parameter.empty
        and p.kind not in variadic_kinds
    ]
    if extra:
        raise TypeError(
            f"cannot subscribe {name}: it requires {', '.join(map(repr, extra))} besides the "
            "event, but handlers are called with the event alone; give "
            f"{'it' if len(extra) == 1 else 'them'} a default or drop "
            f"{'it' if len(extra) == 1 else 'them'}"
        )
    return event_param.annotation if event_param is not None else inspect.Parameter.empty


def _event_classes(
    annotation: object, name: str, *, explicit: bool = False
) -> tuple[type[Event], ...]:
    """The Event classes an annotation (or explicit argument) stands for."""
    if t.get_origin(annotation) is t.Annotated:
        annotation = t.get_args(annotation)[0]
    if t.get_origin(annotation) in (t.Union, types.UnionType):
        members = t.get_args(annotation)
    else:
        members = (annotation,)
    classes: list[type[Event]] = []
    for member in members:
        if isinstance(member, type) and issubclass(member, Event):
            classes.append(member)
            continue
        where = (
            "the class passed to subscribe()" if explicit else "its first parameter's annotation"
        )
        if member is type(None):
            problem = "allows None, which is not an event; drop '| None'"
        elif isinstance(member, str):
            problem = f"is the string {member!r}, which could not be resolved to a class"
        else:
            problem = (
                f"includes {_describe(member)}, which is not an Event subclass; "
                "handlers receive Event instances (class MyEvent(Event): ...)"
            )
        raise TypeError(f"cannot subscribe {name}: {where} {problem}")
    return tuple(classes)


def _accepts(annotation: object, event_class: type[Event]) -> bool:
    """Whether a parameter annotated ``annotation`` accepts ``event_class`` events.

    Annotations that cannot be judged (unevaluated strings, type variables)
    are trusted; the type checker has the last word on those.
    """
    if annotation is inspect.Parameter.empty or annotation is t.Any or isinstance(annotation, str):
        return True
    if t.get_origin(annotation) is t.Annotated:
        return _accepts(t.get_args(annotation)[0], event_class)
    if t.get_origin(annotation) in (t.Union, types.UnionType):
        return any(_accepts(member, event_class) for member in t.get_args(annotation))
    if isinstance(annotation, type):
        return issubclass(event_class, annotation)
    return True


def _describe(annotation: object) -> str:
    return annotation.__qualname__ if isinstance(annotation, type) else repr(annotation)
