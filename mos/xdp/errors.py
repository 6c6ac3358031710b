"""The one exception of XDP control."""

from __future__ import annotations

from ..errors import MosError


class XdpError(MosError):
    """An error a user can act on; ``str()`` is one line meant to be printed as is. A :class:`MosError`, so
    that one ``except MosError`` catches every user-facing error of the stack."""
