"""Names a middlebox author thinks in: events, endpoint sides, hook points, end reasons, TCP states.

The numeric values are the C engine's (``userspace/mos_engine.h``), read through :mod:`mos.abi`.
"""

from __future__ import annotations

import enum
import socket
from typing import Dict, Union

from .abi import ffi, lib, policy_names
from .errors import MosError


class Event(enum.IntEnum):
    """Built-in events, named as in mOS (plus DATA_GAP). User-defined events get ids from 32 up."""

    PKT_IN = lib.MOS_EV_PKT_IN
    """A packet of a tracked connection, raised at each hook (sender's and receiver's side)."""
    CONN_START = lib.MOS_EV_CONN_START
    """A connection began to be tracked (its first packet, normally the client's SYN)."""
    CONN_NEW_DATA = lib.MOS_EV_CONN_NEW_DATA
    """New in-order bytes reached a side's receive buffer; ``ev.side`` is the receiving side."""
    REXMIT = lib.MOS_EV_REXMIT
    """A segment carried bytes already seen; ``ev.inconsistent`` says whether they differ."""
    TCP_STATE_CHANGE = lib.MOS_EV_TCP_STATE_CHANGE
    """One endpoint's TCP state changed (``ev.side``; ``ev.old_state`` -> ``ev.new_state``)."""
    CONN_END = lib.MOS_EV_CONN_END
    """The connection ended; raised exactly once, with ``ev.reason`` (an :class:`EndReason`)."""
    ORPHAN = lib.MOS_EV_ORPHAN
    """A packet that belongs to no tracked connection (``conn`` is None)."""
    ERROR = lib.MOS_EV_ERROR
    """An anomaly (``ev.reason``, an :class:`ErrorKind`): on a connection (out-of-window segment or RST,
    buffer limit, memory cap), a malformed packet (``MALFORMED``: ``conn`` is None, ``ev.malformed``
    names the ``malformed_*`` counter), or a wrong checksum (``CHECKSUM_INVALID``: ``ev.bad_checksum``)."""
    DATA_GAP = lib.MOS_EV_DATA_GAP
    """Bytes that will never arrive: ``ev.offset``/``ev.length`` in the receiving side's stream."""
    ICMP_ERROR = lib.MOS_EV_ICMP_ERROR
    """An ICMP or ICMPv6 error (destination unreachable, packet too big, time exceeded, parameter problem)
    quoting a packet of the connection: ``ev.side`` sent the quoted packet (the error is addressed to it),
    ``ev.icmp_type``/``ev.icmp_code`` say which error, ``ev.data`` is the ICMP message (header and quote)."""


BUILTIN_EVENTS = lib.MOS_EV_BUILTIN_COUNT
USER_EVENT_BASE = lib.MOS_EV_USER_BASE
MAX_EVENTS = lib.MOS_EV_MAX
if len(Event) != BUILTIN_EVENTS:  # pragma: no cover - the engine gained an event this module lacks
    raise ImportError(f"mos.events knows {len(Event)} events, the engine {BUILTIN_EVENTS}")


PROTOCOLS: Dict[str, int] = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
"""The transport protocols whose flows are connections (``Monitor(protocols=...)``, ``conn.protocol``), by
name, with their IP protocol numbers."""
PROTOCOL_NAMES: Dict[int, str] = {v: k for k, v in PROTOCOLS.items()}


class Side(enum.IntEnum):
    """An endpoint of a connection. ``BOTH`` is for subscriptions only."""

    CLIENT = lib.MOS_SIDE_CLI
    SERVER = lib.MOS_SIDE_SVR
    BOTH = 2
    """Subscriptions only: no C value."""

    @property
    def peer(self) -> Side:
        """The other endpoint."""
        if self is Side.BOTH:
            raise ValueError("Side.BOTH has no peer")
        return Side.SERVER if self is Side.CLIENT else Side.CLIENT


class Hook(enum.IntEnum):
    """When a handler runs, as in mOS: after the sender's stack or after the receiver's stack is updated."""

    SND = lib.MOS_HK_SND
    RCV = lib.MOS_HK_RCV


class EndReason(enum.IntEnum):
    """Why a connection ended."""

    FIN = lib.MOS_END_FIN
    RST = lib.MOS_END_RST
    TIMEOUT = lib.MOS_END_TIMEOUT
    """Idle for longer than the timeout of its state (``timeout_udp`` for a UDP flow)."""
    IDLE = lib.MOS_END_TIMEOUT
    """The same reason as ``TIMEOUT`` (an alias): what a UDP flow's idle end is called elsewhere."""
    EVICTION = lib.MOS_END_EVICTION
    EOF = lib.MOS_END_EOF
    """End of input (end of the capture, or the monitor was stopped)."""


class TcpState(enum.IntEnum):
    """The RFC 9293 TCP states of one endpoint."""

    CLOSED = lib.MOS_TCP_CLOSED
    LISTEN = lib.MOS_TCP_LISTEN
    SYN_SENT = lib.MOS_TCP_SYN_SENT
    SYN_RECEIVED = lib.MOS_TCP_SYN_RECEIVED
    ESTABLISHED = lib.MOS_TCP_ESTABLISHED
    FIN_WAIT_1 = lib.MOS_TCP_FIN_WAIT_1
    FIN_WAIT_2 = lib.MOS_TCP_FIN_WAIT_2
    CLOSE_WAIT = lib.MOS_TCP_CLOSE_WAIT
    CLOSING = lib.MOS_TCP_CLOSING
    LAST_ACK = lib.MOS_TCP_LAST_ACK
    TIME_WAIT = lib.MOS_TCP_TIME_WAIT


class ErrorKind(enum.IntEnum):
    """The ``ev.reason`` of an :data:`Event.ERROR`."""

    OUT_OF_WINDOW = lib.MOS_ERR_OUT_OF_WINDOW
    """A data segment entirely outside the receiver's window."""
    RST_OUT_OF_WINDOW = lib.MOS_ERR_RST_OUT_OF_WINDOW
    """A RST whose sequence number is outside the receiver's window (ignored)."""
    BUFFER_LIMIT = lib.MOS_ERR_BUFFER_LIMIT
    """The side's buffer limit stopped bytes from being held."""
    MEMCAP = lib.MOS_ERR_MEMCAP
    """The global reassembly memory cap stopped bytes from being held."""
    SEGMENT_LIMIT = lib.MOS_ERR_SEGMENT_LIMIT
    """Too many out-of-order segments held on one side."""
    SYN_DATA_DISCARDED = lib.MOS_ERR_SYN_DATA_DISCARDED
    """Data on a SYN that the peer did not acknowledge (its SYN-ACK acknowledged only the SYN): not
    delivered; the bytes sent later at those sequence numbers are the stream's."""
    DATA_AFTER_FIN = lib.MOS_ERR_DATA_AFTER_FIN
    """Bytes at or past their sender's FIN (data after the FIN, the tail of a retransmission straddling
    it): not delivered, the receiver ignores them."""
    MALFORMED = lib.MOS_ERR_MALFORMED
    """A packet the decoder rejected (``conn`` is None): ``ev.malformed`` is its ``malformed_*`` counter
    (``malformed_too_many_ipv6_ext``, ``malformed_truncated_tcp``, ...). Inline, the frame is dropped."""
    DEFRAG_OVERLAP = lib.MOS_ERR_DEFRAG_OVERLAP
    """An IP fragment overlapping held bytes of its datagram with different bytes (``conn`` is None: raised
    before the flow lookup): ``ev.offset`` is the fragment's offset, ``ev.length`` the bytes that differ.
    The fragment policy (``Monitor(frag_policy=...)``) decides which copy the datagram keeps."""

    RST_CHALLENGED = lib.MOS_ERR_RST_CHALLENGED
    """A RST inside the receiver's window but not at the next byte it expects: a target that follows RFC
    5961 (every policy but ``old-linux`` and ``solaris``) answers it with a challenge ACK and goes on, so
    the connection goes on here too."""
    INVALID_TIMESTAMP = lib.MOS_ERR_INVALID_TIMESTAMP
    """A packet to an endpoint in SYN_SENT whose TCP timestamp echoes none of its SYNs: the endpoint
    discards it (a forged answer racing the server's), so it changes nothing here either."""
    INVALID_ACK = lib.MOS_ERR_INVALID_ACK
    """A packet to an endpoint in SYN_SENT that does not acknowledge its SYN: discarded, as above."""
    RST_INJECT_SUSPECTED = lib.MOS_ERR_RST_INJECT_SUSPECTED
    """On a connection picked up again after a RST the engine took (which ended the earlier one): the
    RST's sender went on talking, so its stack never sent it. ``ev.length`` is how many bytes its peer
    had sent meanwhile, delivered first on the new connection."""
    SYNACK_DIFF_SEQ = lib.MOS_ERR_SYNACK_DIFF_SEQ
    """A second SYN-ACK with another ISN before the client acknowledged one: the one the client
    acknowledges anchors the server's stream."""

    FIN_SUPERSEDED = lib.MOS_ERR_FIN_SUPERSEDED
    """A FIN the receiver had not taken (out of order) whose sequence number data then covered: the
    receiver's stack drops such a FIN, so it is no FIN here either (its sender's state goes back); the
    bytes are the stream."""
    CHECKSUM_INVALID = lib.MOS_ERR_CHECKSUM_INVALID
    """A packet with a wrong IPv4 header, TCP or UDP checksum (a host drops it), dropped before any
    connection saw it: ``ev.bad_checksum`` is its ``bad_checksum_*`` counter; ``conn`` is its connection
    when it has one (left untouched), else None. Inline, the frame is dropped."""

    @property
    def event_name(self) -> str:
        """The anomaly's name, as Suricata names its stream events (``stream.pkt_out_of_window``, ...):
        from the engine's anomaly table, which also names the counter the anomaly bumps."""
        return str(ffi.string(lib.mos_anomaly_name(int(self))).decode())


class OrphanKind(enum.IntEnum):
    """The ``ev.reason`` of an :data:`Event.ORPHAN`."""

    UNTRACKED_PROTO = lib.MOS_ORPHAN_UNTRACKED_PROTO
    """Of no protocol the monitor tracks: neither TCP nor UDP (ARP, ICMP that quotes no tracked flow, ...), or
    UDP with ``Monitor(protocols=("tcp",))``."""
    NO_CONN = lib.MOS_ORPHAN_NO_CONN
    """TCP of no tracked connection (pick-up off, or a stray after the close)."""
    TABLE_FULL = lib.MOS_ORPHAN_TABLE_FULL
    """TCP that would start a connection while the flow table is full of live ones."""


class Policy(str, enum.Enum):
    """Overlap policies (which copy of overlapping bytes the stream keeps), as Suricata and Snort name them."""

    FIRST = "first"
    LAST = "last"
    BSD = "bsd"
    LINUX = "linux"
    OLD_LINUX = "old-linux"
    WINDOWS = "windows"
    VISTA = "vista"
    SOLARIS = "solaris"

    @property
    def code(self) -> int:
        """The engine's number for this policy (its index in the engine's policy name table)."""
        return _POLICY_CODES[self.value]


_POLICY_CODES = {name: i for i, name in enumerate(policy_names())}
if set(_POLICY_CODES) != {p.value for p in Policy}:  # pragma: no cover - a policy added on one side only
    raise ImportError(f"mos.Policy and the engine's policies differ: {sorted(_POLICY_CODES)}")


def policy_of(policy: Union[Policy, str]) -> Policy:
    """A :class:`Policy` from itself or its name; a :class:`MosError` naming the choices otherwise."""
    try:
        return Policy(policy)
    except ValueError:
        names = ", ".join(p.value for p in Policy)
        raise MosError(f"unknown overlap policy {policy!r} (choose from {names})") from None
