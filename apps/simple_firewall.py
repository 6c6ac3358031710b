"""simple_firewall: mOS's ``samples/simple_firewall``, on mos-xdp: a rule table judges each new connection.

    mos-xdp run apps/simple_firewall.py --iface IN --peer OUT -- --rules fw.rules
    mos-xdp run apps/simple_firewall.py --pcap trace.pcap -- --rules fw.rules --interval 0

The rule file has mOS's syntax, one rule a line, ``#`` starting a comment::

    # action  client          server          ports (optional, any order)
    DROP      10.0.0.0/24     10.0.0.0/24     dport:80
    ACCEPT    10.0.1.7        10.0.1.9        sport:1024
    ACCEPT    0.0.0.0/0       192.0.2.0/24

The first rule whose client prefix, server prefix and ports (0 or absent: any) match a new connection
(TCP, or a UDP flow) decides; a connection no rule matches is accepted, as in mOS. ``DROP`` drops the
connection (live: in XDP from its first packet on); ``ACCEPT`` stops looking at it (live: its packets skip
userspace, forwarded in XDP). Prefixes may be IPv4 or IPv6 (mOS takes IPv4 only). Unlike mOS, which
judges only a client's initial SYN, every connection the engine starts is judged, picked-up ones too:
a firewall that let mid-stream traffic through unjudged would be easy to walk around.

Every ``--interval`` seconds (default 1, as mOS; 0: never) and at the end, the table is printed with the
connections each rule matched.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import List, Optional, Union

from mos import AppArg, AppArgs, Connection, Event, EventInfo, Monitor, MosError

Net = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class Rule:
    """One line of the rule file: ``action`` (ACCEPT or DROP), the prefixes, the ports (0: any) and
    ``count``, the connections it decided."""

    def __init__(self, action: str, client: Net, server: Net) -> None:
        self.action, self.client, self.server = action, client, server
        self.sport = self.dport = self.count = 0

    def matches(self, caddr: str, saddr: str, sport: int, dport: int) -> bool:
        """Whether a connection from ``caddr:sport`` to ``saddr:dport`` is this rule's."""
        c, s = ipaddress.ip_address(caddr), ipaddress.ip_address(saddr)
        return (c in self.client and s in self.server and self.sport in (0, sport)
                and self.dport in (0, dport))

    def __str__(self) -> str:
        ports = "".join(f" {k}:{v}" for k, v in (("sport", self.sport), ("dport", self.dport)) if v)
        return f"{self.action:7} {str(self.client):19} {str(self.server):19}{ports}"


def parse_rules(text: str, where: str = "rules") -> List[Rule]:
    """The rules of a rule file's text; ValueError naming the line for anything malformed."""
    rules = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        if len(line) < 3 or line[0] not in ("ACCEPT", "DROP"):
            raise ValueError(f"{where}:{n}: expected ACCEPT|DROP CLIENT SERVER [sport:N] [dport:N], "
                             f"not {raw.strip()!r}")
        try:
            rule = Rule(line[0], ipaddress.ip_network(line[1], strict=False),
                        ipaddress.ip_network(line[2], strict=False))
        except ValueError as e:
            raise ValueError(f"{where}:{n}: {e}") from None
        for port in line[3:]:
            key, _, value = port.partition(":")
            if key not in ("sport", "dport") or not value.isdigit() or not 0 < int(value) < 65536:
                raise ValueError(f"{where}:{n}: {port!r}: a port is sport:N or dport:N, N in 1..65535")
            setattr(rule, key, int(value))
        rules.append(rule)
    return rules


def _rules_file(path: str) -> List[Rule]:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_rules(f.read(), path)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None


ARGS = [
    AppArg("rules", type=_rules_file, required=True, metavar="FILE", help="The rule file (mOS's syntax)."),
    AppArg("interval", type=float, default=1.0, metavar="SECONDS",
           help="Print the rule table every SECONDS of packet time (0: only at the end)."),
]

RULES: List[Rule] = []


def lookup(caddr: str, saddr: str, sport: int, dport: int) -> Optional[Rule]:
    """The first rule matching the connection, counted; None: no rule (accepted)."""
    for rule in RULES:
        if rule.matches(caddr, saddr, sport, dport):
            rule.count += 1
            return rule
    return None


def _judge(conn: Connection, ev: EventInfo) -> None:
    i = conn.info()
    rule = lookup(i["client_addr"], i["server_addr"], i["client_port"], i["server_port"])
    if rule is not None and rule.action == "DROP":
        try:
            conn.drop()
        except MosError:  # offline: nothing to drop, the table says what would have been
            conn.stop_monitoring()
        return
    try:
        conn.bypass()  # accepted: nothing more to look at
    except MosError:
        conn.stop_monitoring()


def table() -> str:
    """The rule table with each rule's count (mOS prints it every second)."""
    lines = ["idx  conns  rule"]
    lines += [f"{k:<4} {r.count:<6} {r}" for k, r in enumerate(RULES, 1)]
    return "\n".join(lines)


def _print_table(mon: Monitor, now: float) -> None:
    print(table(), flush=True)


def init(mon: Monitor, args: AppArgs) -> None:
    """Judge every new connection by ``args.rules``; print the table every ``args.interval`` seconds."""
    if args.interval < 0:
        raise MosError("--interval must be 0 or more seconds")
    RULES[:] = args.rules
    mon.on(Event.CONN_START, _judge)
    if args.interval:
        mon.add_timer(args.interval, _print_table, periodic=True)


def finish(mon: Monitor) -> None:
    """The final table."""
    print(table())
    sys.stdout.flush()
