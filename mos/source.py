"""Packet sources: what :meth:`mos.Monitor.run` reads packets from.

The interface between a :class:`~mos.Monitor` and a source is two small declared types:

* :class:`PacketSource`, what a source offers: ``open``, the optional ``stable_region`` its packets live
  in, ``pump`` (move some packets into the engine; False at the end of input), ``progress``, ``close``,
  and two attributes, ``session`` (a :class:`LiveControl` for sources whose packets can be acted on,
  None otherwise) and ``read_error``;
* :class:`mos.monitor.EnginePort`, what the monitor hands the source in ``pump``: ``feed`` a batch
  (engine, handlers and timers in order), or, for a source that drives the engine from C itself (the
  AF_XDP pump), the engine handle plus ``dispatch``, ``next_due``, ``fire_timers`` and ``advance``.

The monitor owns the run (set-up, the loop, the end of input and the counters); a source only says
where packets come from. :class:`BatchSource` is the base of sources that return batches of
``struct mos_pkt`` (``pump`` is written once there); :class:`PcapSource` reads capture files.
"""

from __future__ import annotations

import abc
import os
import sys
from typing import TYPE_CHECKING, Any, Optional, Protocol, Tuple

from .abi import ffi, lib
from .errors import MosError

if TYPE_CHECKING:
    from .connection import Connection
    from .monitor import EnginePort

BATCH = 256
"""Packets per batch read from a capture (one crossing into the engine and back per batch)."""


class LiveControl(Protocol):
    """The verdicts and XDP control of a live run (what ``Connection.drop`` & co. and ``Monitor.bpf`` /
    ``Monitor.block`` reach). A source with one sets it as its ``session``."""

    prog: Any
    """The XDP program (``mos.xdp.XdpProgram``)."""

    def drop(self, port: EnginePort, conn: Connection) -> None:
        """Drop the connection's packets: in XDP from now on, and those of the batch being handled."""

    def bypass(self, port: EnginePort, conn: Connection) -> None:
        """The connection's later packets skip userspace."""

    def drop_packet(self, port: EnginePort) -> None:
        """Drop only the packet being handled."""

    def rewrite(self, port: EnginePort, data: bytes, offset: int, layer: str, resize: bool) -> int:
        """Overwrite bytes of the packet being handled; returns its new length."""

    def send(self, port: EnginePort, conn: Connection, side: int, payload: bytes, flags: int) -> int:
        """Send a segment of the connection to endpoint ``side`` (``Connection.send``); its length."""

    def reset(self, port: EnginePort, conn: Connection) -> None:
        """Reset the connection: a RST to each endpoint (``Connection.reset``)."""

    def send_packet(self, port: EnginePort, frame: bytes, iface: Optional[str]) -> None:
        """Send a raw frame (``Monitor.send_packet``)."""

    def answer_arp(self, addr: str) -> str:
        """Answer ARP requests for an IPv4 address in XDP for the run (``Monitor.answer_arp``)."""


class PacketSource(Protocol):
    """Where a :class:`~mos.Monitor` run gets its packets (see the module's doc)."""

    @property
    def session(self) -> Optional[LiveControl]:
        """Live control for the run's handlers, or None (a capture)."""

    @property
    def read_error(self) -> Optional[str]:
        """Why the input ended early (a truncated capture), once it did."""

    def open(self) -> None:
        """Acquire the input; a :class:`MosError` when it cannot be read."""

    def stable_region(self) -> Optional[Tuple[Any, Any]]:
        """``(lo, hi)``: every packet's bytes lie there and stay readable until :meth:`close` (a mapped
        file: reassembly then holds them by reference), or None."""

    def pump(self, port: EnginePort) -> bool:
        """Move the next packets into the engine through ``port``; False once the input has ended."""

    def progress(self) -> Optional[Tuple[int, int]]:
        """``(position, size)`` of the input, when it has a size."""

    def close(self) -> None:
        """Release the input (also after an error)."""


class BatchSource(abc.ABC):
    """A source that reads batches of ``struct mos_pkt`` of one link type; :meth:`pump` feeds them."""

    session: Optional[LiveControl] = None
    read_error: Optional[str] = None

    def __init__(self, batch: int = BATCH) -> None:
        self._pkts = ffi.new("struct mos_pkt[]", batch)
        self._batch = batch

    @property
    @abc.abstractmethod
    def linktype(self) -> int:
        """The link type (``MOS_DLT_*``) of every packet."""

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the input."""

    @abc.abstractmethod
    def next_batch(self, pkts: Any, n: int) -> int:
        """Fill up to ``n`` packets into ``pkts``; the count, 0 at the end of input."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the input."""

    def stable_region(self) -> Optional[Tuple[Any, Any]]:
        """None: packets are valid for one batch only."""
        return None

    def progress(self) -> Optional[Tuple[int, int]]:
        """None: no known size."""
        return None

    def pump(self, port: EnginePort) -> bool:
        """One batch into the engine."""
        n = self.next_batch(self._pkts, self._batch)
        if n <= 0:
            return False
        port.feed(self.linktype, self._pkts, n)
        return True


class PcapSource(BatchSource):
    """A pcap or pcapng file, read by libpcap in C; packets point into the mapped file when it can be."""

    def __init__(self, path: str, batch: int = BATCH) -> None:
        super().__init__(batch)
        self.path = str(path)
        self._src: Any = None
        self._err = ffi.new("char[512]")
        self._got = 0
        self._linktype = 0
        self._size = 0

    def open(self) -> None:
        """Open the file; a :class:`MosError` with libpcap's message when it is not a capture."""
        src = lib.mos_pcap_open(self.path.encode(), self._err, len(self._err))
        if src == ffi.NULL:
            raise MosError(ffi.string(self._err).decode())
        self._src = src
        self._linktype = lib.mos_pcap_linktype(src)
        self._size = lib.mos_pcap_file_size(src)

    @property
    def linktype(self) -> int:
        """The capture's link type."""
        return self._linktype

    def stable_region(self) -> Optional[Tuple[Any, Any]]:
        """The mapped file, when libpcap reads it from a mapping."""
        region = ffi.new("const void *[2]")
        if lib.mos_pcap_stable_region(self._src, region, region + 1):
            return region[0], region[1]
        return None

    def next_batch(self, pkts: Any, n: int) -> int:
        """The next packets; a read error ends the input (a :class:`MosError` if nothing came before)."""
        got = lib.mos_pcap_next_batch(self._src, pkts, n, self._err, len(self._err))
        if got < 0:
            msg = f"{self.path}: {ffi.string(self._err).decode()}"
            if not self._got:
                raise MosError(msg)
            # a capture cut short (the capturing tool was killed): what came before is good
            self.read_error = msg
            sys.stderr.write(f"mos-xdp: warning: {msg}; the {self._got} packets before it were processed\n")
            return 0
        self._got += got
        return int(got)

    def checksum_sample(self, eng: Any) -> None:
        """Checksum setting auto: show the engine ``eng`` the start of the file before it is run, so that
        it decides whether the capture has offloaded checksums before it judges the first packet (the
        file is read a second time, up to the sample's end; not for a pipe, which reads once)."""
        if not os.path.isfile(self.path):
            return
        src = lib.mos_pcap_open(self.path.encode(), self._err, len(self._err))
        if src == ffi.NULL:
            return
        try:
            linktype = lib.mos_pcap_linktype(src)
            while True:
                got = lib.mos_pcap_next_batch(src, self._pkts, self._batch, self._err, len(self._err))
                if got <= 0:
                    lib.mos_engine_checksum_sample(eng, linktype, self._pkts, 0, 1)
                    return
                if lib.mos_engine_checksum_sample(eng, linktype, self._pkts, got, 0) < got:
                    return  # decided
        finally:
            lib.mos_pcap_close(src)

    def progress(self) -> Optional[Tuple[int, int]]:
        """Bytes of the file read so far, and its size."""
        return int(lib.mos_pcap_file_pos(self._src)), int(self._size)

    def close(self) -> None:
        """Close the file."""
        if self._src is not None:
            lib.mos_pcap_close(self._src)
            self._src = None
