"""Runnable examples of eventbus (see each module, and `make demo`)."""
