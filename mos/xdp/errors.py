"""The one exception of XDP control."""

from __future__ import annotations


class XdpError(Exception):
    """An error a user can act on; ``str()`` is one line meant to be printed as is."""
