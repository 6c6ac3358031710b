"""UDP flows are connections (issue 12, item 3): CONN_START / PKT_IN with the payload / CONN_END (idle
timeout, end of input), per-flow counters, fragments, ICMP errors tied to the flow they quote, the
accounting partition, ``protocols=("tcp",)``, ``streams`` rows, a corpus capture against tshark's counts, and
a live DNS exchange (dnsmasq and dig in namespaces) through ``apps/dns_log.py``."""

from __future__ import annotations

import json
import subprocess
import time
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from conftest import run_cli
from scapy.all import (
    DNS,
    DNSQR,
    DNSRR,
    ICMP,
    IP,
    TCP,
    UDP,
    Ether,
    ICMPv6DestUnreach,
    IPv6,
    Raw,
    fragment,
    wrpcap,
)

from mos import EndReason, Event, Monitor, MosError, OrphanKind, Side
from mos.communityid import community_id
from mos.stats import DISPOSITIONS, accounted
from mos.streams import run_streams, stream_table

CLI, SRV = "10.0.0.1", "10.0.0.53"


def frame(pkt: Any, t: float) -> Any:
    """An Ethernet frame at time ``t``."""
    f = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt
    f.time = t
    return f


def dns_query(qid: int, name: str, sport: int = 40000, t: float = 1.0) -> Any:
    return frame(IP(src=CLI, dst=SRV) / UDP(sport=sport, dport=53) / DNS(id=qid, rd=1, qd=DNSQR(qname=name)), t)


def dns_answer(qid: int, name: str, addr: str, sport: int = 40000, t: float = 1.01) -> Any:
    return frame(IP(src=SRV, dst=CLI) / UDP(sport=53, dport=sport) /
                 DNS(id=qid, qr=1, aa=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata=addr)), t)


def record(pcap: Path, **mon: Any) -> Tuple[List[Tuple[Any, ...]], Dict[str, int], Dict[int, Dict[str, Any]]]:
    """Every event of ``pcap`` (event, conn id, side, data, reason) and the counters; infos at CONN_END."""
    m = Monitor(**mon)
    got: List[Tuple[Any, ...]] = []
    infos: Dict[int, Dict[str, Any]] = {}

    def h(conn: Any, ev: Any) -> None:
        got.append((ev.event, conn.id if conn else None, ev.side, ev.data, ev.reason))
        if ev.event == Event.CONN_END:
            infos[conn.id] = conn.info()

    for e in (Event.CONN_START, Event.PKT_IN, Event.CONN_END, Event.ORPHAN, Event.ICMP_ERROR):
        m.on(e, h)
    st = m.run_pcap(str(pcap))
    assert accounted(st) == st["packets"], {k: st[k] for k in DISPOSITIONS}
    return got, st, infos


def test_dns_exchange_is_one_flow(tmp_path: Path) -> None:
    q, a = dns_query(7, "a.example"), dns_answer(7, "a.example", "10.9.9.9")
    wrpcap(str(tmp_path / "d.pcap"), [q, a])
    got, st, infos = record(tmp_path / "d.pcap")
    qp, ap = bytes(q[UDP].payload), bytes(a[UDP].payload)
    assert got == [
        (Event.CONN_START, 1, Side.CLIENT, None, 0),
        (Event.PKT_IN, 1, Side.SERVER, qp, 0),  # at the receiver's hook: the server received the query
        (Event.PKT_IN, 1, Side.CLIENT, ap, 0),
        (Event.CONN_END, 1, Side.CLIENT, None, EndReason.EOF),
    ]
    i = infos[1]
    assert i["protocol"] == "udp" and i["client"] == f"{CLI}:40000" and i["server"] == f"{SRV}:53"
    assert (i["c2s_packets"], i["s2c_packets"], i["c2s_payload"], i["s2c_payload"]) == (1, 1, len(qp), len(ap))
    assert i["client_state"] is None and i["end"] == "EOF"
    assert st["udp_packets"] == 2 and st["conns_created"] == 1 and st["orphan_untracked_proto"] == 0


def test_client_is_first_sender_and_flows_are_apart(tmp_path: Path) -> None:
    # the answer first (the query was not captured): its sender is the client, as the peers do
    pk = [dns_answer(1, "x.example", "10.1.1.1", sport=40001, t=1.0), dns_query(2, "y.example", sport=40002, t=1.1),
          dns_answer(2, "y.example", "10.1.1.2", sport=40002, t=1.2), dns_query(3, "z.example", sport=40001, t=1.3)]
    wrpcap(str(tmp_path / "d.pcap"), pk)
    got, st, infos = record(tmp_path / "d.pcap")
    assert [g[:3] for g in got if g[0] == Event.PKT_IN] == [
        (Event.PKT_IN, 1, Side.SERVER), (Event.PKT_IN, 2, Side.SERVER), (Event.PKT_IN, 2, Side.CLIENT),
        (Event.PKT_IN, 1, Side.CLIENT)]
    assert infos[1]["client"] == f"{SRV}:53" and infos[1]["server"] == f"{CLI}:40001"
    assert infos[2]["client"] == f"{CLI}:40002"
    assert st["conns_created"] == 2 and st["udp_packets"] == 4


def test_idle_timeout_ends_the_flow(tmp_path: Path) -> None:
    pk = [dns_query(1, "a.example", t=1.0), dns_query(2, "b.example", sport=40009, t=20.0),
          dns_query(3, "a.example", t=21.0)]  # the first tuple again, after its flow went idle
    wrpcap(str(tmp_path / "d.pcap"), pk)
    got, st, infos = record(tmp_path / "d.pcap", timeout_udp=5.0)
    ends = [(g[1], g[4]) for g in got if g[0] == Event.CONN_END]
    assert ends == [(1, EndReason.TIMEOUT), (2, EndReason.EOF), (3, EndReason.EOF)]
    assert EndReason.IDLE is EndReason.TIMEOUT
    assert st["conns_timed_out"] == 1 and st["conns_created"] == 3
    # the default is 60 s: the same capture is then two flows
    _, st, _ = record(tmp_path / "d.pcap")
    assert st["conns_created"] == 2 and st["conns_timed_out"] == 0


def test_fragments_are_one_datagram(tmp_path: Path) -> None:
    body = bytes(range(256)) * 12
    dg = IP(src=CLI, dst=SRV, id=77) / UDP(sport=5000, dport=6000) / Raw(body)
    frags = [frame(f, 1.0 + k / 100) for k, f in enumerate(fragment(dg, fragsize=1000))]
    assert len(frags) == 4
    wrpcap(str(tmp_path / "f.pcap"), frags)
    got, st, infos = record(tmp_path / "f.pcap")
    assert [(g[0], g[3]) for g in got if g[0] == Event.PKT_IN] == [(Event.PKT_IN, body)]
    assert infos[1]["c2s_packets"] == 1 and infos[1]["c2s_payload"] == len(body)
    assert st["datagrams_reassembled"] == 1 and st["frag_held"] == 4 and st["udp_packets"] == 0


def test_icmp_errors_reach_the_flow_they_quote(tmp_path: Path) -> None:
    q = dns_query(9, "a.example", t=1.0)
    unreach = frame(IP(src=SRV, dst=CLI) / ICMP(type=3, code=3) / bytes(q[IP])[:28], 1.1)
    q6 = frame(IPv6(src="fd00::1", dst="fd00::53") / UDP(sport=41000, dport=53) / Raw(b"v6 query"), 1.2)
    unreach6 = frame(IPv6(src="fd00::53", dst="fd00::1") / ICMPv6DestUnreach(code=4) / bytes(q6[IPv6]), 1.3)
    # quoting no tracked flow, and an ICMP that is no error: orphans as before
    stray = frame(IP(src=SRV, dst=CLI) / ICMP(type=3, code=1) /
                  bytes(IP(src=CLI, dst="10.7.7.7") / UDP(sport=1, dport=2))[:28], 1.4)
    echo = frame(IP(src=SRV, dst=CLI) / ICMP(type=8), 1.5)
    wrpcap(str(tmp_path / "i.pcap"), [q, unreach, q6, unreach6, stray, echo])
    got, st, _ = record(tmp_path / "i.pcap")
    icmp = [g for g in got if g[0] == Event.ICMP_ERROR]
    assert [(g[1], g[2], g[4]) for g in icmp] == [(1, Side.CLIENT, 3 << 8 | 3), (2, Side.CLIENT, 1 << 8 | 4)]
    assert icmp[0][3] == bytes(unreach[ICMP])
    assert [g[4] for g in got if g[0] == Event.ORPHAN] == [OrphanKind.UNTRACKED_PROTO] * 2
    assert st["icmp_error_packets"] == 2 and st["orphan_untracked_proto"] == 2

    m = Monitor()
    seen: List[Tuple[Any, ...]] = []
    m.on(Event.ICMP_ERROR, lambda c, ev: seen.append((ev.icmp_type, ev.icmp_code, c.protocol, ev.packet.proto)))
    m.run_pcap(str(tmp_path / "i.pcap"))
    assert seen == [(3, 3, "udp", 1), (1, 4, "udp", 58)]


def test_icmp_error_quoting_tcp(tmp_path: Path) -> None:
    syn = frame(IP(src=CLI, dst=SRV) / TCP(sport=4444, dport=80, flags="S", seq=100), 1.0)
    ttl = frame(IP(src="10.0.0.254", dst=CLI) / ICMP(type=11, code=0) / bytes(syn[IP])[:28], 1.1)
    wrpcap(str(tmp_path / "t.pcap"), [syn, ttl])
    got, st, _ = record(tmp_path / "t.pcap")
    assert [(g[1], g[2], g[4]) for g in got if g[0] == Event.ICMP_ERROR] == [(1, Side.CLIENT, 11 << 8)]


def test_tcp_only_keeps_udp_orphan(tmp_path: Path) -> None:
    pk = [dns_query(1, "a.example"), dns_answer(1, "a.example", "10.9.9.9")]
    wrpcap(str(tmp_path / "d.pcap"), pk)
    got, st, _ = record(tmp_path / "d.pcap", protocols=("tcp",))
    assert got == [(Event.ORPHAN, None, Side.CLIENT, None, OrphanKind.UNTRACKED_PROTO)] * 2
    assert st["orphan_untracked_proto"] == 2 and st["udp_packets"] == 0 and st["conns_created"] == 0
    _, st2, _ = record(tmp_path / "d.pcap", protocols="tcp")
    assert st2["orphan_untracked_proto"] == 2


@pytest.mark.parametrize("bad", [("tcp", "sctp"), ("udp",), (), 7, "tcp,icmp"])
def test_bad_protocols(bad: Any) -> None:
    with pytest.raises(MosError, match="protocols"):
        Monitor(protocols=bad)


def test_tcp_only_methods_raise_on_udp(tmp_path: Path) -> None:
    wrpcap(str(tmp_path / "d.pcap"), [dns_query(1, "a.example"), dns_answer(1, "a.example", "10.9.9.9")])
    m = Monitor()
    errors: List[str] = []
    ctx: List[Any] = []

    def h(conn: Any, ev: Any) -> None:
        assert conn.protocol == "udp"
        assert conn.community_id == community_id(CLI, SRV, 40000, 53, proto=17)
        conn.ctx = (conn.ctx or 0) + 1
        ctx.append(conn.ctx)
        for call in (lambda: conn.peek(Side.SERVER), lambda: conn.state(Side.CLIENT),
                     lambda: conn.stream_offset(Side.CLIENT), lambda: conn.ppeek(Side.SERVER, 0, 1),
                     lambda: conn.set_policy("linux"), lambda: conn.set_buffering(Side.SERVER, False),
                     lambda: conn.held_segments(Side.SERVER), lambda: conn.window(Side.SERVER)):
            with pytest.raises(MosError, match="needs a TCP connection") as ei:
                call()
            errors.append(str(ei.value))
        with pytest.raises(MosError, match="live traffic only"):
            conn.drop()

    m.on(Event.PKT_IN, h)
    m.run_pcap(str(tmp_path / "d.pcap"))
    assert ctx == [1, 2] and len(errors) == 16 and m.handler_errors == 0
    assert "connection 1 is a UDP flow" in errors[0]


def test_order_connection_keeps_datagram_order(tmp_path: Path) -> None:
    # many datagrams of two flows interleaved in one batch: each flow's events in its packet order
    pk = []
    for k in range(50):
        pk.append(frame(IP(src=CLI, dst=SRV) / UDP(sport=1000, dport=2000) / Raw(b"a%d" % k), 1 + k / 1000))
        pk.append(frame(IP(src=CLI, dst=SRV) / UDP(sport=1001, dport=2000) / Raw(b"b%d" % k), 1 + k / 1000))
    wrpcap(str(tmp_path / "o.pcap"), pk)
    for order in ("connection", "batch", "packet"):
        got, st, _ = record(tmp_path / "o.pcap", order=order)
        for cid, tag in ((1, b"a"), (2, b"b")):
            assert [g[3] for g in got if g[0] == Event.PKT_IN and g[1] == cid] == [tag + b"%d" % k for k in range(50)]


def test_table_full_evicts_udp(tmp_path: Path) -> None:
    pk = [dns_query(k, "a.example", sport=40000 + k, t=1 + k) for k in range(5)]
    wrpcap(str(tmp_path / "d.pcap"), pk)
    got, st, _ = record(tmp_path / "d.pcap", max_conns=2)
    assert st["conns_evicted"] == 3 and st["conns_created"] == 5
    assert [g[1] for g in got if g[0] == Event.CONN_END and g[4] == EndReason.EVICTION] == [1, 2, 3]


def test_streams_rows_for_udp(tmp_path: Path) -> None:
    q, a = dns_query(7, "a.example"), dns_answer(7, "a.example", "10.9.9.9")
    syn = frame(IP(src=CLI, dst=SRV) / TCP(sport=4444, dport=80, flags="S", seq=100), 2.0)
    wrpcap(str(tmp_path / "d.pcap"), [q, a, syn])
    rows, st = run_streams(str(tmp_path / "d.pcap"), str(tmp_path / "out"))
    assert [r["proto"] for r in rows] == ["udp", "tcp"]
    u = rows[0]
    assert (u["c2s_packets"], u["s2c_packets"]) == (1, 1)
    assert (u["c2s_bytes"], u["s2c_bytes"]) == (len(q[UDP].payload), len(a[UDP].payload))
    assert u["community_id"] == community_id(CLI, SRV, 40000, 53, proto=17) != community_id(CLI, SRV, 40000, 53)
    assert (tmp_path / "out" / "1.c2s").read_bytes() == bytes(q[UDP].payload)
    assert (tmp_path / "out" / "1.s2c").read_bytes() == bytes(a[UDP].payload)
    rows2, totals, _ = stream_table(str(tmp_path / "d.pcap"))
    assert [r["proto"] for r in rows2] == ["udp", "tcp"] and totals["connections"] == 2
    rows3, _ = run_streams(str(tmp_path / "d.pcap"), None, protocols=("tcp",))
    assert [r["proto"] for r in rows3] == ["tcp"]
    r = run_cli(str(tmp_path / "d.pcap"))
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, err
    assert " udp " in out and "2 in UDP flows" in out
    r = run_cli(str(tmp_path / "d.pcap"), "--protocols", "tcp")
    out = r.stdout.decode()
    assert r.returncode == 0 and " udp " not in out and "2 of other protocols" in out
    r = run_cli(str(tmp_path / "d.pcap"), "--protocols", "sctp")
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err and "--protocols" in err


# wikipedia.pcap's UDP conversations as `tshark -q -z conv,udp` counts them (address A, B, frames A->B, B->A)
WIKIPEDIA_UDP = [
    ("141.142.220.226:137", "141.142.220.255:137", 7, 0),
    ("141.142.220.118:43927", "141.142.2.2:53", 1, 1), ("141.142.220.118:37676", "141.142.2.2:53", 1, 1),
    ("141.142.220.118:40526", "141.142.2.2:53", 1, 1), ("141.142.220.118:32902", "141.142.2.2:53", 1, 1),
    ("141.142.220.118:59816", "141.142.2.2:53", 1, 1), ("141.142.220.118:59714", "141.142.2.2:53", 1, 1),
    ("141.142.220.118:58206", "141.142.2.2:53", 1, 1), ("141.142.220.118:38911", "141.142.2.2:53", 1, 1),
    ("141.142.220.118:59746", "141.142.2.2:53", 1, 1), ("141.142.220.118:45000", "141.142.2.2:53", 1, 1),
    ("141.142.220.118:48479", "141.142.2.2:53", 1, 1), ("141.142.220.118:48128", "141.142.2.2:53", 1, 1),
    ("141.142.220.118:56056", "141.142.2.2:53", 1, 1), ("141.142.220.118:55092", "141.142.2.2:53", 1, 1),
    ("[fe80::3074:17d5:2052:c324]:65373", "[ff02::1:3]:5355", 2, 0),
    ("141.142.220.226:55131", "224.0.0.252:5355", 2, 0),
    ("[fe80::3074:17d5:2052:c324]:54213", "[ff02::1:3]:5355", 2, 0),
    ("141.142.220.226:55671", "224.0.0.252:5355", 2, 0),
    ("141.142.220.202:5353", "224.0.0.251:5353", 1, 0),
    ("[fe80::217:f2ff:fed7:cf65]:5353", "[ff02::fb]:5353", 1, 0),
    ("141.142.220.50:5353", "224.0.0.251:5353", 1, 0), ("141.142.220.44:5353", "224.0.0.251:5353", 1, 0),
    ("141.142.220.238:56641", "141.142.220.255:137", 1, 0),
]


def test_corpus_udp_flows_match_tshark(corpus_dir: Path) -> None:
    pcap = corpus_dir / "zeek" / "traces" / "wikipedia.pcap"
    rows, st = run_streams(str(pcap), None)
    got = {(r["client"], r["server"]): (r["c2s_packets"], r["s2c_packets"]) for r in rows if r["proto"] == "udp"}
    assert got == {(a, b): (ab, ba) for a, b, ab, ba in WIKIPEDIA_UDP}
    assert st["udp_packets"] == sum(ab + ba for _, _, ab, ba in WIKIPEDIA_UDP) == 48
    assert accounted(st) == st["packets"]
    # the DNS answers' payloads: what dns_log parses
    names = set()
    m = Monitor()

    @m.on(Event.PKT_IN)
    def pkt(conn: Any, ev: Any) -> None:
        if conn.info()["server_port"] == 53 and ev.side is Side.CLIENT:
            names.add(DNS(ev.data).qd[0].qname.decode())

    m.run_pcap(str(pcap))
    # tshark -Y dns.flags.response==1 -T fields -e dns.qry.name
    assert names == {"meta.wikimedia.org.", "upload.wikimedia.org.", "upload.wikimedia.org.ncsa.uiuc.edu."}


def test_corpus_fragmented_udp(corpus_dir: Path) -> None:
    # PcapPlusPlus's ip4_fragments.pcap: its UDP datagrams come in fragments, each one datagram here
    pcap = corpus_dir / "pcapplusplus" / "ip4_fragments.pcap"
    rows, st = run_streams(str(pcap), None)
    assert accounted(st) == st["packets"]
    assert st["datagrams_reassembled"] >= 1
    udp = [r for r in rows if r["proto"] == "udp"]
    assert sum(r["c2s_packets"] + r["s2c_packets"] for r in udp) == st["datagrams_reassembled"] + st["udp_packets"]


def test_dns_log_offline(tmp_path: Path) -> None:
    pk = [dns_query(7, "a.example", t=1.0), dns_answer(7, "a.example", "10.9.9.9", t=1.25),
          dns_query(8, "lost.example", sport=40001, t=2.0)]
    wrpcap(str(tmp_path / "d.pcap"), pk)
    app = Path(__file__).resolve().parent.parent / "apps" / "dns_log.py"
    r = subprocess.run([str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "mos-xdp"), "run", str(app),
                        "--pcap", str(tmp_path / "d.pcap"), "--", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert lines == [
        {"client": f"{CLI}:40000", "server": f"{SRV}:53", "id": 7, "name": "a.example", "qtype": "A",
         "rcode": "NOERROR", "answers": ["10.9.9.9"], "latency_ms": 250.0},
        {"client": f"{CLI}:40001", "server": f"{SRV}:53", "id": 8, "name": "lost.example", "qtype": "A",
         "rcode": None, "answers": [], "latency_ms": None},
    ]


# ---- live: a resolver in a namespace, dig through an inline mos-xdp ----------------------------------------

DNS_APP = """
import json, os
from mos import Event

def init(mon):
    def start(conn, ev):
        if conn.protocol == "udp" and os.environ.get("MOS_TEST_DROP"):
            conn.drop()

    def end(conn, ev):
        i = conn.info()
        with open(os.environ["MOS_TEST_OUT"], "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "protocol": i["protocol"], "client": i["client"],
                                "c2s": i["c2s_packets"], "s2c": i["s2c_packets"], "end": i["end"]}) + "\\n")

    mon.on(Event.CONN_START, start)
    mon.on(Event.CONN_END, end)
"""


@pytest.fixture(scope="module")
def dns_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """c (dig) -- m (mos-xdp inline) -- s (dnsmasq answering *.example.test with 10.9.9.9)."""
    from netns import Topology, reap_stale, require_root
    from test_live import CLIENT, SERVER

    from mos.net.topology import XDP_END_HOST

    require_root()
    reap_stale()
    tmp = tmp_path_factory.mktemp("dns")
    with Topology() as topo:
        c, m, s = topo.netns("c"), topo.netns("m"), topo.netns("s")
        tag = topo.tag[-6:]
        mi, mo, lc, ls = f"mi{tag}", f"mo{tag}", f"lc{tag}", f"ls{tag}"
        topo.veth(c, lc, m, mi, f"{CLIENT}/24", None)
        topo.veth(m, mo, s, ls, None, f"{SERVER}/24")
        for ns, dev in ((c, lc), (s, ls)):
            ns.ethtool(dev, XDP_END_HOST)
        topo.spawn(s, "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--address=/example.test/10.9.9.9",
                   f"--listen-address={SERVER}", "--bind-interfaces", "--port", "53", "--user=root",
                   f"--pid-file={tmp / 'dnsmasq.pid'}", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while s.run("dig", f"@{SERVER}", "+short", "+time=1", "+tries=1", "up.example.test",
                    check=False).stdout.strip() != "10.9.9.9":
            assert time.time() < deadline, "dnsmasq did not come up"
            time.sleep(0.2)

        def _leftovers() -> None:
            from mos import xdp

            with m.entered():
                xdp.detach(mi)

        topo.on_close(_leftovers)
        yield types.SimpleNamespace(c=c, m=m, s=s, mi=mi, mo=mo, server=SERVER, client=CLIENT)


def _dig(net: Any, name: str, timeout: int = 2, sport: int = 0) -> subprocess.CompletedProcess:
    src = ["-b", f"{net.client}#{sport}"] if sport else []
    return net.c.run("dig", *src, f"@{net.server}", f"+time={timeout}", "+tries=1", "+short", name, check=False,
                     timeout=timeout + 20)


def _live(net: Any, app: str, *extra: str, env: Optional[Dict[str, str]] = None) -> Any:
    from test_live import LiveRun

    r = LiveRun(net.m, app, "--iface", net.mi, "--peer", net.mo, *extra, env=env)
    r.wait_ready()
    return r


@pytest.mark.netns
def test_live_dns_log_logs_the_answers(dns_net: Any) -> None:
    app = str(Path(__file__).resolve().parent.parent / "apps" / "dns_log.py")
    run = _live(dns_net, app, "--stats", "--", "--json")
    try:
        answers = [_dig(dns_net, f"h{k}.example.test").stdout.strip() for k in range(3)]
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr
    assert answers == ["10.9.9.9"] * 3
    recs = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
    assert sorted(r["name"] for r in recs) == [f"h{k}.example.test" for k in range(3)]
    assert all(r["answers"] == ["10.9.9.9"] and r["rcode"] == "NOERROR" and r["latency_ms"] >= 0 for r in recs)
    assert all(r["server"] == f"{dns_net.server}:53" for r in recs)
    st = run.engine_counters()
    assert st["udp_packets"] >= 6 and st["conns_created"] >= 3


@pytest.mark.netns
def test_live_udp_drop_makes_dig_time_out(dns_net: Any, tmp_path: Path) -> None:
    app = tmp_path / "dns_rec.py"
    app.write_text(DNS_APP)
    out = tmp_path / "rec.jsonl"
    run = _live(dns_net, str(app), env={"MOS_TEST_OUT": str(out), "MOS_TEST_DROP": "1"})
    try:
        # the same flow twice: the first query dropped by the engine, the second in XDP (the flow's key)
        r = [_dig(dns_net, "dropped.example.test", sport=40555) for _ in range(2)]
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr
    assert [x.returncode for x in r] == [9, 9] and "10.9.9.9" not in r[1].stdout  # 9: no reply
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["protocol"], x["c2s"], x["s2c"]) for x in recs] == [("udp", 1, 0)]  # the second never came up


@pytest.mark.netns
def test_live_udp_flows_reach_one_worker(dns_net: Any, tmp_path: Path) -> None:
    app = tmp_path / "dns_rec.py"
    app.write_text(DNS_APP)
    out = tmp_path / "rec.jsonl"
    run = _live(dns_net, str(app), "--workers", "2", env={"MOS_TEST_OUT": str(out)})
    try:
        answers = [_dig(dns_net, f"w{k}.example.test").stdout.strip() for k in range(12)]
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr
    assert answers == ["10.9.9.9"] * 12
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    udp = [x for x in recs if x["protocol"] == "udp"]
    clients = [x["client"] for x in udp]
    assert len(clients) == len(set(clients)) == 12, udp  # each flow in one worker only
    assert all((x["c2s"], x["s2c"]) == (1, 1) for x in udp), udp
    assert len({x["pid"] for x in udp}) == 2, udp
