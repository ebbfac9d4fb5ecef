"""The shopping-cart example: users, catalog, cart, payments, checkout and notifications,
six modules of one process that never call each other and talk only through events.

Run ``python -m examples.cart`` (or ``make demo``); see docs/cart.md.
"""
