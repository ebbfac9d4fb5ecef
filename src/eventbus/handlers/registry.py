"""HandlerRegistry: the subscriptions, and the cached dispatch plan of each event class.

A registry can be filled without a bus (``cart = HandlerRegistry()``,
``@cart.subscribe``) and added to one later with ``bus.include(cart)``.
:class:`~eventbus.EventBus` is itself a registry.

Which subscriptions an event class goes to, in delivery order, is computed
on the first publish of that class and cached until the next subscribe,
include or unsubscribe, so publishing never walks the subscriptions (a bus
compiles its dispatch plans from it: ``eventbus.plans``).
"""

from __future__ import annotations

import collections.abc as c
import dataclasses
import itertools
import threading
import types
import typing as t

from ..events import Event
from ..naming import MAIN_MODULES
from ..retry import RetryPolicy
from .subscription import Subscription, caller_namespace, handler_name

if t.TYPE_CHECKING:
    from ..dead_letters import DeadLetter

__all__ = ["HandlerRegistry"]

E = t.TypeVar("E", bound=Event)
P = t.ParamSpec("P")
R = t.TypeVar("R")


class HandlerRegistry:
    """A set of handler subscriptions, usable on its own or as part of a bus."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._sequence = itertools.count()
        # The last number given to each name of a built-in method (``?.list.append#2``).
        self._numbers: dict[str, int] = {}
        self._lock = threading.RLock()
        # Per event class: its subscriptions in delivery order.
        self._plans: dict[type, tuple[Subscription, ...]] = {}

    # -- registering ---------------------------------------------------------------

    @t.overload
    def subscribe(  # type: ignore[overload-overlap]  # an Event class is callable too
        self,
        event_type: type[E],
        /,
        *,
        priority: int = ...,
        retry: RetryPolicy | None = ...,
        run_in_thread: bool = ...,
        timeout: float | None = ...,
        name: str | None = ...,
        idempotent: bool = ...,
        on_give_up: c.Callable[[DeadLetter], object] | None = ...,
    ) -> c.Callable[[c.Callable[t.Concatenate[E, P], R]], c.Callable[t.Concatenate[E, P], R]]: ...

    @t.overload
    def subscribe(
        self,
        handler: c.Callable[t.Concatenate[E, P], R],
        /,
        *,
        priority: int = ...,
        retry: RetryPolicy | None = ...,
        run_in_thread: bool = ...,
        timeout: float | None = ...,
        name: str | None = ...,
        idempotent: bool = ...,
        on_give_up: c.Callable[[DeadLetter], object] | None = ...,
    ) -> c.Callable[t.Concatenate[E, P], R]: ...

    @t.overload
    def subscribe(
        self,
        /,
        *,
        priority: int = ...,
        retry: RetryPolicy | None = ...,
        run_in_thread: bool = ...,
        timeout: float | None = ...,
        name: str | None = ...,
        idempotent: bool = ...,
        on_give_up: c.Callable[[DeadLetter], object] | None = ...,
    ) -> c.Callable[[c.Callable[t.Concatenate[E, P], R]], c.Callable[t.Concatenate[E, P], R]]: ...

    def subscribe(
        self,
        target: object = None,
        /,
        *,
        priority: int = 0,
        retry: RetryPolicy | None = None,
        run_in_thread: bool = False,
        timeout: float | None = None,
        name: str | None = None,
        idempotent: bool = False,
        on_give_up: c.Callable[[DeadLetter], object] | None = None,
    ) -> t.Any:
        """Register a handler; usable bare, with an event class, or with options.

        ::

            @bus.subscribe                      # class from the annotation
            def on_added(event: ItemAdded) -> None: ...

            @bus.subscribe(ItemAdded, priority=10)
            async def reserve(event: ItemAdded) -> None: ...

            bus.subscribe(obj.method)           # plain call, no decorator

        The event class comes from the explicit argument, else from the first
        parameter's annotation (a union subscribes to each member). The
        handler also receives subclasses of that class.

        Options:

        - ``priority``: higher runs first; equal priorities run in
          registration order.
        - ``retry``: a :class:`RetryPolicy`; by default the bus's.
        - ``run_in_thread``: for a blocking sync handler; ``publish_async``
          runs it in a worker thread so the event loop keeps going.
        - ``timeout``: seconds an async handler's attempt may take; a timed
          out attempt is a failed attempt (:class:`HandlerTimeoutError`).
          Refused for sync handlers, which Python cannot interrupt.
        - ``name``: the handler's name in dead letters, logs, traces and
          redrives; by default its qualified name, ``module.function``, with
          the module named as it is imported even when it runs as
          ``__main__``. Give a stable name to a handler whose qualified name
          is not unique (a lambda, a method of several instances) or may
          change (a function you may rename while its letters wait).
        - ``idempotent``: skip an event this handler already handled (its
          name and the event's id are recorded in the bus's ``inbox`` once it
          succeeded): for handlers that must not act twice on a redelivery.
        - ``on_give_up``: a plain function called with the :class:`DeadLetter`
          once the handler's last attempt failed and the letter was made, in
          process or on a worker: what it publishes follows from the event
          (on a worker, written with the letter). For a saga's compensation
          instead of a dead-letter signal receiver; an exception in it is
          logged and the letter stands.

        Returns the handler unchanged. Raises ``TypeError`` at once for a
        handler that cannot be called with one event, an annotation that is
        not an Event subclass, or a bad option; ``ValueError`` if the handler
        is already subscribed to that class or under another name (a handler
        has one name), or if another handler already has its name (a dead
        letter names the handler it will be redriven to). Handlers are told
        apart by identity (a bound method by its object and function).
        """
        options = {
            "priority": priority,
            "retry": retry,
            "run_in_thread": run_in_thread,
            "timeout": timeout,
            "name": name,
            "idempotent": idempotent,
            "on_give_up": on_give_up,
        }
        if isinstance(target, type):
            if not issubclass(target, Event):
                raise TypeError(
                    f"subscribe({target.__qualname__}) needs an Event subclass, and "
                    f"{target.__qualname__} is not one; pass the event class, or the handler"
                )
            event_class: type[Event] = target
            namespace = caller_namespace()

            def decorator(
                handler: c.Callable[t.Concatenate[E, P], R],
            ) -> c.Callable[t.Concatenate[E, P], R]:
                self._add(handler, event_class, namespace, **options)  # type: ignore[arg-type]
                return handler

            return decorator
        if target is None:
            namespace = caller_namespace()

            def infer(
                handler: c.Callable[t.Concatenate[E, P], R],
            ) -> c.Callable[t.Concatenate[E, P], R]:
                self._add(handler, None, namespace, **options)  # type: ignore[arg-type]
                return handler

            return infer
        self._add(target, None, caller_namespace(), **options)  # type: ignore[arg-type]
        return target

    def include(self, registry: HandlerRegistry, /) -> None:
        """Add every subscription of ``registry`` to this one, in its registration order.

        The subscriptions are copied: handlers subscribed to ``registry``
        afterwards are not added.
        """
        if not isinstance(registry, HandlerRegistry):
            raise TypeError(f"include() takes a HandlerRegistry, got {registry!r}")
        if registry is self:
            raise ValueError("a registry cannot include itself")
        with registry._lock:
            incoming = list(registry._subscriptions)
        with self._lock:
            taken = {sub.name for sub in self._subscriptions}
            adding = []
            for sub in incoming:
                # A built-in method whose name is taken here is numbered, as at subscribe.
                if sub.name.startswith("?.") and sub.name in taken:
                    sub = dataclasses.replace(sub, name=self._free_name(sub, taken))
                taken.add(sub.name)
                adding.append(sub)
            for sub in adding:
                self._check_not_subscribed(sub)
            for sub in adding:
                self._subscriptions.append(dataclasses.replace(sub, sequence=next(self._sequence)))
            self._invalidate()

    def unsubscribe(
        self, handler: c.Callable[..., object] | str, /, event_type: type[Event] | None = None
    ) -> None:
        """Remove ``handler``, or the handler of that name (from ``event_type`` only, if given).

        By name is how to remove a handler whose function object you no
        longer hold: the earlier version of a re-run notebook cell or of a
        reloaded module. Raises ``ValueError`` if it was not subscribed. An
        event whose dispatch already started may still reach it.
        """

        def chosen(sub: Subscription) -> bool:
            if isinstance(handler, str):
                return sub.name == handler
            return same_handler(sub.handler, handler)

        with self._lock:
            keep = [
                sub
                for sub in self._subscriptions
                if not (chosen(sub) and (event_type is None or event_type in sub.event_types))
            ]
            if len(keep) == len(self._subscriptions):
                target = f" from {event_type.__qualname__}" if event_type is not None else ""
                raise ValueError(f"cannot unsubscribe {handler!r}{target}: it is not subscribed")
            if event_type is not None:  # keep the handler's other event classes
                for sub in self._subscriptions:
                    if chosen(sub) and event_type in sub.event_types:
                        rest = tuple(k for k in sub.event_types if k is not event_type)
                        if rest:
                            keep.append(dataclasses.replace(sub, event_types=rest))
                keep.sort(key=lambda s: s.sequence)
            self._subscriptions = keep
            self._invalidate()

    # -- introspection -------------------------------------------------------------

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """Every subscription, in registration order."""
        with self._lock:
            return tuple(self._subscriptions)

    def subscriptions_for(self, event_class: type[Event], /) -> tuple[Subscription, ...]:
        """The subscriptions an event of ``event_class`` goes to, in delivery order."""
        return self._plan(event_class)

    # -- internals -----------------------------------------------------------------

    def _add(
        self,
        handler: object,
        event_type: type[Event] | None,
        namespace: c.Mapping[str, object] | None,
        *,
        priority: int,
        retry: RetryPolicy | None,
        run_in_thread: bool,
        timeout: float | None,
        name: str | None,
        idempotent: bool,
        on_give_up: c.Callable[[DeadLetter], object] | None,
    ) -> None:
        with self._lock:
            sub = Subscription.create(
                handler,
                event_type,
                priority=priority,
                retry=retry,
                run_in_thread=run_in_thread,
                timeout=timeout,
                name=name,
                idempotent=idempotent,
                on_give_up=on_give_up,
                sequence=next(self._sequence),
                caller_locals=namespace,
            )
            if name is None and sub.name.startswith("?."):
                sub = dataclasses.replace(sub, name=self._free_name(sub))
            self._check_not_subscribed(sub)
            self._subscriptions.append(sub)
            self._invalidate()

    def _free_name(self, new: Subscription, taken: c.Container[str] = ()) -> str:
        """A process-local name for a handler that no other process could name.

        A method of a built-in object (``seen.append``) has no module, so no
        other process can import it and redrive to it: two of them on one
        bus are told apart by a number (``?.list.append#2``) instead of
        being refused, which keeps ``subscribe(...)(seen.append)`` working.
        """
        for sub in self._subscriptions:
            if same_handler(sub.handler, new.handler):
                return sub.name  # subscribed again, to another class: the name it has
        if new.name not in taken and not any(s.name == new.name for s in self._subscriptions):
            return new.name
        # Numbers are never given twice, even after an unsubscribe: a letter waiting
        # for a removed handler must not be redriven to a new one that took its number.
        base = new.name.partition("#")[0]
        while True:
            number = self._numbers[base] = self._numbers.get(base, 1) + 1
            name = f"{base}#{number}"
            if name not in taken and not any(s.name == name for s in self._subscriptions):
                return name

    def _check_not_subscribed(self, new: Subscription) -> None:
        """Refuse a handler that would run twice for one event, or a name already taken."""
        for sub in self._subscriptions:
            if not same_handler(sub.handler, new.handler):
                if sub.name == new.name:
                    raise ValueError(_name_taken(new, sub))
                continue
            if sub.name != new.name:
                raise ValueError(
                    f"cannot subscribe {new.handler!r} as {new.name!r}: it is already "
                    f"subscribed as {sub.name!r}, and a handler has one name (its dead "
                    "letters are redriven to it by that name, a broker names its consumer "
                    f"group after it); subscribe it with name={sub.name!r}, or subscribe a "
                    "function of its own under the other name"
                )
            for old in sub.event_types:
                for added in new.event_types:
                    if issubclass(added, old) or issubclass(old, added):
                        overlap = (
                            f"{old.__qualname__}"
                            if old is added
                            else f"{old.__qualname__}, which overlaps {added.__qualname__}"
                        )
                        raise ValueError(
                            f"{new.name} is already subscribed to {overlap}; subscribing it "
                            "again would run it twice per event (included the same registry "
                            "twice?)"
                        )

    def _rearrange(
        self, drop: c.Callable[[Subscription], bool], add: c.Iterable[Subscription]
    ) -> None:
        """Take out the subscriptions ``drop`` says yes to and put in ``add``, in place.

        Each added subscription goes where its ``sequence`` puts it, so one
        taken out and put back runs where it ran before; one whose handler
        is subscribed again meanwhile is not added twice. The seam of the
        testing helpers (``eventbus.testing.override``, ``isolate``): no
        other check is made on what is put in.
        """
        with self._lock:
            kept = [sub for sub in self._subscriptions if not drop(sub)]
            there = list(kept)
            kept.extend(
                sub
                for sub in add
                if not any(same_handler(sub.handler, other.handler) for other in there)
            )
            kept.sort(key=lambda sub: sub.sequence)
            self._subscriptions = kept
            self._invalidate()

    def _invalidate(self) -> None:
        """The subscriptions changed: forget every cached order (the lock is held)."""
        self._plans = {}

    def _plan(self, event_class: type) -> tuple[Subscription, ...]:
        """The subscriptions of ``event_class``, in delivery order; cached."""
        plan = self._plans.get(event_class)
        if plan is not None:
            return plan
        if not (isinstance(event_class, type) and issubclass(event_class, Event)):
            raise TypeError(
                f"only Event instances can be published, got a {event_class.__qualname__}; "
                "define the payload as a class MyEvent(Event) and publish MyEvent(...)"
            )
        with self._lock:  # built under the lock so a concurrent subscribe cannot go unseen
            receiving = sorted(
                (s for s in self._subscriptions if s.receives(event_class)),
                key=lambda s: (-s.priority, s.sequence),
            )
            # A handler subscribed to two unrelated classes (subscribe refuses related ones)
            # receives an event deriving from both once, by its first subscription in order.
            chosen: list[Subscription] = []
            for sub in receiving:
                if not any(same_handler(sub.handler, kept.handler) for kept in chosen):
                    chosen.append(sub)
            plan = tuple(chosen)
            self._plans[event_class] = plan
            return plan


def same_handler(a: object, b: object) -> bool:
    """One handler: the same object, or the same method of the same object.

    Identity, not ``==``: two callable objects equal by value (dataclass
    instances) are two handlers. A bound method is made anew at each
    attribute access, so it is one handler when its object and function are.
    """
    if a is b:
        return True
    if type(a) is not type(b) or not isinstance(a, types.MethodType | types.BuiltinMethodType):
        return False
    method = t.cast(t.Any, a)
    other = t.cast(t.Any, b)
    return bool(
        method.__self__ is other.__self__
        and getattr(method, "__func__", method.__name__)
        == getattr(other, "__func__", other.__name__)
    )


def _name_taken(new: Subscription, old: Subscription) -> str:
    modules = {getattr(sub.handler, "__module__", None) for sub in (new, old)}
    qualnames = {getattr(sub.handler, "__qualname__", None) for sub in (new, old)}
    defaulted = new.name == handler_name(new.handler) == old.name == handler_name(old.handler)
    if defaulted and len(qualnames) == 1 and len(modules) == 2 and modules & MAIN_MODULES:
        # The same file imported twice: run as the script, then imported by its name.
        return (
            f"cannot subscribe {new.handler!r}: {old.handler!r} is already subscribed under "
            f"the name {new.name!r}; they are the same function of one file imported twice, "
            "once as __main__ (the program started) and once by its module name, so each "
            "event would reach it twice; import that module one way only (start the program "
            "from another module, or do not import the script from the modules it imports)"
        )
    return (
        f"cannot subscribe {new.handler!r}: another handler, {old.handler!r}, is already "
        f"subscribed under the name {new.name!r}, and dead letters name the handler they are "
        f"redriven to (a broker names its consumer group after it), so names must be unique; "
        'give each a stable name of its own: subscribe(..., name="orders.ship_express"); '
        "or, if it replaces the earlier handler (a re-run notebook cell, a reloaded module), "
        f"unsubscribe that one first: bus.unsubscribe({new.name!r})"
    )
