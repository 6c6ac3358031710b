"""The stack's user-facing errors (the CLI prints them as one line, without a traceback)."""

from __future__ import annotations


class MosError(Exception):
    """A user-facing error of the stack (bad input, bad option, bad capture)."""


class StaleConnection(MosError):
    """The connection ended and its slot was reused: a handle kept past its CONN_END."""
