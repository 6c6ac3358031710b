"""The stack's user-facing errors (the CLI prints them as one line, without a traceback)."""

from __future__ import annotations


class MosError(Exception):
    """A user-facing error of the stack (bad input, bad option, bad capture)."""


class StaleConnection(MosError):
    """The connection ended and its slot was reused: a handle kept past its CONN_END."""


class HandlerTimeout(MosError):
    """Raised inside app code (an event handler, a timer callback, a Python filter) that ran longer than the
    monitor's ``handler_timeout``, or that was running when a stop signal came (SIGINT, SIGTERM): it is
    reported and counted like any exception of a handler (``handler_timeouts`` in ``Monitor.stats()``), and
    the run goes on. See :mod:`mos.watchdog`."""
