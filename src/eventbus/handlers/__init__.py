"""Handlers: checking them at registration, and the registry that holds them."""

from .registry import HandlerRegistry
from .subscription import Handler, Subscription

__all__ = ["Handler", "HandlerRegistry", "Subscription"]
