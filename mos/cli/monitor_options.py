"""The Monitor's options on the command line, from one table (:data:`OPTIONS`).

Each row maps a click option to a :class:`~mos.monitor.Monitor` keyword. The options have no click
default: an option the user did not give is not passed, so the Monitor's own default applies, and the
help shows that default, read from ``Monitor.__init__``'s signature. Adding an option is adding a row.
"""

from __future__ import annotations

import enum
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import click

from ..abi import checksum_mode_names, frag_policy_names, order_names
from ..events import Policy

__all__ = ["OPTIONS", "MonitorOption", "monitor_kwargs", "monitor_options", "monitor_params"]


class ByteSize(click.ParamType):
    """A byte count: ``65536``, ``64K``, ``8M``, ``2G`` (powers of 1024)."""

    name = "bytes"
    _UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    _RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.I)

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> int:
        if isinstance(value, int):
            return value
        m = self._RE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a byte count (such as 65536, 64K, 8M, 2G)", param, ctx)
        return int(m.group(1)) * self._UNITS[m.group(2).lower()]


SIZE = ByteSize()
SECONDS = click.FloatRange(0, min_open=True)
CHECKSUM_HELP = ("Drop packets with a wrong IPv4, TCP or UDP checksum before the engine: on, off, or auto "
                 "(on, until a sample shows the input has offloaded checksums).")


@dataclass(frozen=True)
class MonitorOption:
    """One row: ``flag`` (as typed) sets the Monitor keyword ``keyword``.

    ``type`` is the click type of the value; a row with ``switch`` set is a flag without a value that
    passes ``switch`` (``--no-pickup`` passes ``pickup=False``). ``streams``: ``mos-xdp streams`` has it
    too.
    """

    keyword: str
    flag: str
    help: str
    type: Any = None
    switch: Optional[bool] = None
    streams: bool = False


OPTIONS: Tuple[MonitorOption, ...] = (
    MonitorOption("policy", "--policy", "Overlap policy: which copy of overlapping TCP bytes the stream keeps.",
                  click.Choice([p.value for p in Policy]), streams=True),
    MonitorOption("frag_policy", "--frag-policy", "Which copy of overlapping IP fragments the datagram keeps.",
                  click.Choice(list(frag_policy_names())), streams=True),
    MonitorOption("checksum", "--checksum", CHECKSUM_HELP, click.Choice(list(checksum_mode_names())), streams=True),
    MonitorOption("vlan_in_key", "--no-vlan", "VLAN ids are not part of a connection's key.", switch=False,
                  streams=True),
    MonitorOption("pickup", "--no-pickup", "Ignore connections already in progress.", switch=False, streams=True),
    MonitorOption("buffer_client", "--no-buffer-client",
                  "Hold no bytes the client receives (mOS's MOS_CLIBUF = 0): data events, no peek.", switch=False),
    MonitorOption("buffer_server", "--no-buffer-server",
                  "Hold no bytes the server receives (mOS's MOS_SVRBUF = 0): data events, no peek.", switch=False),
    MonitorOption("max_conns", "--max-conns", "Flow table capacity (the least recently used is evicted).",
                  click.IntRange(1), streams=True),
    MonitorOption("dir_buffer_limit", "--dir-buffer-limit", "Bytes held per direction (K, M, G suffixes).", SIZE),
    MonitorOption("max_segments", "--max-segments", "Segments held per direction.", click.IntRange(1)),
    MonitorOption("memcap", "--memcap", "Bytes held by reassembly in all (K, M, G suffixes).", SIZE),
    MonitorOption("frag_memcap", "--frag-memcap", "Bytes held by IP defragmentation (K, M, G suffixes).", SIZE),
    MonitorOption("event_queue", "--event-queue", "Events the engine queues per crossing into Python.",
                  click.IntRange(1)),
    MonitorOption("timeout_syn", "--timeout-syn", "Idle timeout (s) before the handshake completes.", SECONDS),
    MonitorOption("timeout_established", "--timeout-established", "Idle timeout (s) of a connection.", SECONDS),
    MonitorOption("timeout_closed", "--timeout-closed",
                  "Seconds a closed connection absorbs stragglers (TIME_WAIT; default: the engine's).", SECONDS),
    MonitorOption("timeout_udp", "--timeout-udp", "Idle timeout (s) of a UDP flow.", SECONDS),
    MonitorOption("protocols", "--protocols", "Protocols whose flows are connections (tcp,udp or tcp: UDP "
                  "then arrives as ORPHAN).", click.Choice(["tcp,udp", "udp,tcp", "tcp"]), streams=True),
    MonitorOption("frag_timeout", "--frag-timeout", "Seconds an incomplete IP datagram is held.", SECONDS),
    MonitorOption("sync", "--sync", "Hand events to Python after every packet that raised some.", switch=True),
    MonitorOption("order", "--order", "When a handler's actions take effect: from the connection's next packet "
                  "(connection), the next batch (batch, fastest), or events after every packet (packet).",
                  click.Choice(list(order_names()))),
    MonitorOption("peek_window", "--peek-window",
                  "Bytes of each stream peek/ppeek can read back behind its end (K, M, G suffixes).", SIZE),
    MonitorOption("filter", "--filter", "Monitor only flows whose first packet (and orphans) match this tcpdump "
                  "expression (libpcap syntax); both directions of a matching flow are monitored.", str,
                  streams=True),
    MonitorOption("strict", "--strict", "Stop at the first exception in a handler.", switch=True),
    MonitorOption("handler_timeout", "--handler-timeout",
                  "Seconds a handler, timer callback or Python filter may run before it is interrupted "
                  "(HandlerTimeout, reported as a handler error; 0: no limit).", click.FloatRange(0)),
)
"""Every Monitor option of ``run`` (and those of ``streams``), in ``--help`` order."""


def monitor_params() -> Dict[str, inspect.Parameter]:
    """``Monitor.__init__``'s keywords and their defaults."""
    from ..monitor import Monitor

    return dict(inspect.signature(Monitor.__init__).parameters)


def _available(streams: bool) -> List[MonitorOption]:
    params = monitor_params()
    rows = []
    for row in OPTIONS:
        if streams and not row.streams:
            continue
        if row.keyword not in params:
            raise AssertionError(f"monitor_options: Monitor has no keyword {row.keyword!r}")  # the table is wrong
        rows.append(row)
    return rows


def _default_text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        return f"{value >> 30}G" if value % (1 << 30) == 0 else f"{value >> 20}M"
    return str(value)


def _option(row: MonitorOption, default: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if row.switch is not None:
        return click.option(row.flag, row.keyword, is_flag=True, default=None, flag_value=row.switch, help=row.help)
    shown = "" if default is None or default is inspect.Parameter.empty else f"  [default: {_default_text(default)}]"
    return click.option(row.flag, row.keyword, type=row.type, default=None, help=row.help + shown)


def monitor_options(streams: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding the table's options (``streams``: only those ``mos-xdp streams`` has)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        params = monitor_params()
        for row in reversed(_available(streams)):
            f = _option(row, params[row.keyword].default)(f)
        return f

    return deco


def monitor_kwargs(values: Dict[str, Any]) -> Dict[str, Any]:
    """The Monitor keywords the user gave, taken out of a command's ``values`` (click's keyword arguments);
    an option not given (or not offered) is left to the Monitor's default."""
    out = {}
    for row in OPTIONS:
        v = values.pop(row.keyword, None)
        if v is not None:
            out[row.keyword] = v
    return out
