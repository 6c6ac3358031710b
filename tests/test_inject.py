"""What an app sends (``conn.reset``, ``conn.send``, ``monitor.send_packet``) and length-changing rewrites.

Live: the inline topology of tests/test_live.py (its fixture, imported): client "c" -- mos-xdp in "m" --
server "s", real stacks at both ends. Offline: a capture built with scapy, the frames the app would have
sent recorded (``Monitor.sent()``) and checked against the conversation's own numbers.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from scapy.all import IP, TCP, Ether

from mos import Event, Monitor, MosError, Side
from mos.source import PcapSource
from tests.pcaps import REQ, Conv, payload
from tests.test_live import PORT, SERVER, Inline, _app, _records, inline  # noqa: F401 (the fixture)

RESET_PORT, TALK_PORT = 8101, 8102
RESET_AFTER = 1 << 20

# A server that streams until the connection fails, then records how and when (time.time()).
STREAM_SERVER = """
    import json, socket, sys, time
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(({addr!r}, {port}))
    srv.listen(1)
    srv.settimeout(60)
    c, _ = srv.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Type: application/octet-stream\\r\\n\\r\\n")
    chunk = b"x" * 65536
    rec = {{"error": None}}
    try:
        for _ in range(4096):  # bounded: 256 MiB at most
            c.sendall(chunk)
    except OSError as e:
        rec = {{"error": type(e).__name__, "errno": e.errno, "t": time.time()}}
    with open({out!r}, "w") as f:
        json.dump(rec, f)
"""

RESET_APP = """
    import json, os, time
    from mos import Event, Side
    OUT = os.environ["MOS_TEST_OUT"]
    PORT = int(os.environ["MOS_TEST_PORT"])
    AFTER = int(os.environ["MOS_TEST_AFTER"])

    def _data(conn, ev):
        if ev.side is not Side.CLIENT or conn.info()["server_port"] != PORT or conn.ctx:
            return
        if conn.stream_offset(Side.CLIENT) >= AFTER:
            conn.ctx = "reset"
            t = time.time()
            conn.reset()
            with open(OUT, "a") as f:
                f.write(json.dumps({"reset_at": t}) + "\\n")

    def _end(conn, ev):
        if conn.info()["server_port"] == PORT:
            with open(OUT, "a") as f:
                f.write(json.dumps({"end": ev.reason.name}) + "\\n")

    def init(mon):
        mon.on(Event.CONN_NEW_DATA, _data)
        mon.on(Event.CONN_END, _end)
"""


@pytest.mark.netns
def test_reset_while_curl_downloads(inline: Inline, tmp_path: Path) -> None:  # noqa: F811
    """conn.reset() during a download: curl and the server both see the connection reset within 100 ms;
    the engine ends the connection with reason RST."""
    out, srv_out = tmp_path / "app.jsonl", tmp_path / "server.json"
    server = inline.s.popen(sys.executable, "-c", textwrap.dedent(STREAM_SERVER.format(
        addr=SERVER, port=RESET_PORT, out=str(srv_out))))
    app = _app(tmp_path, "reset.py", RESET_APP)
    run = inline.run(app, "--stats", env={"MOS_TEST_OUT": str(out), "MOS_TEST_PORT": str(RESET_PORT),
                                          "MOS_TEST_AFTER": str(RESET_AFTER)})
    try:
        time.sleep(0.3)  # the server listens
        curl = inline.c.popen("curl", "-sS", "-o", "/dev/null", "--max-time", "30",
                              f"http://{SERVER}:{RESET_PORT}/", stderr=subprocess.PIPE, text=True)
        rc = curl.wait(timeout=60)
        curl_done = time.time()
        err = curl.stderr.read() if curl.stderr else ""
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
        code = run.stop()
    assert code == 0, run.stderr
    recs = _records(out)
    [reset_at] = [r["reset_at"] for r in recs if "reset_at" in r]
    assert {"end": "RST"} in recs, recs
    assert rc == 56, (rc, err)  # curl: "Recv failure: Connection reset by peer"
    assert "reset" in err.lower(), err
    assert curl_done - reset_at < 0.1, curl_done - reset_at  # (its exit and our wait included: ~10 ms)
    srv = json.loads(srv_out.read_text())
    assert srv["error"] in ("ConnectionResetError", "BrokenPipeError"), srv
    assert srv["t"] - reset_at < 0.1, srv["t"] - reset_at
    eng = run.engine_counters()
    assert eng["conns_reset"] == 1 and eng["injected_packets"] == 2, eng
    af = run.counters("  af_xdp worker 0:")
    assert af["injected"] == 2 and af.get("inject_failed", 0) == 0, af
    inline.assert_clean()


# A server that answers one request line with two lines, then closes; a client that records all it got.
TALK_SERVER = """
    import socket
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(({addr!r}, {port}))
    srv.listen(1)
    srv.settimeout(30)
    c, _ = srv.accept()
    c.settimeout(10)
    got = b""
    while not got.endswith(b"\\n"):
        got += c.recv(100)
    c.sendall(b"PONG " + got)
    got2 = b""
    while not got2.endswith(b"\\n"):
        got2 += c.recv(100)
    c.sendall(b"BYE " + got2)
    c.shutdown(socket.SHUT_WR)
    c.recv(100)
    c.close()
"""

TALK_CLIENT = """
    import json, socket, time
    s = socket.create_connection(({addr!r}, {port}), timeout=10)
    s.sendall(b"PING 1\\n")
    time.sleep(0.5)
    s.sendall(b"PING 2\\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    print(json.dumps(data.decode()))
"""

TALK_APP = """
    import json, os
    from mos import Event, Side
    OUT = os.environ["MOS_TEST_OUT"]
    PORT = int(os.environ["MOS_TEST_PORT"])

    def _data(conn, ev):
        if ev.side is Side.SERVER and conn.info()["server_port"] == PORT and ev.data == b"PING 1\\n":
            n = conn.send(Side.CLIENT, b"INJECTED\\n")
            with open(OUT, "a") as f:
                f.write(json.dumps({"sent": n}) + "\\n")

    def _end(conn, ev):
        if conn.info()["server_port"] == PORT:
            i = conn.info()
            with open(OUT, "a") as f:
                f.write(json.dumps({"end": ev.reason.name, "s2c": i["s2c_stream"], "c2s": i["c2s_stream"]}) + "\\n")

    def init(mon):
        mon.on(Event.CONN_NEW_DATA, _data)
        mon.on(Event.CONN_END, _end)
"""


def _wait_end(out: Path, timeout: float = 5.0) -> None:
    """Until the app recorded a CONN_END (the last ACK of the close may follow curl's exit)."""
    end = time.time() + timeout
    while time.time() < end and not any("end" in r for r in _records(out)):
        time.sleep(0.05)


@pytest.mark.netns
def test_send_payload_to_the_client(inline: Inline, tmp_path: Path) -> None:  # noqa: F811
    """conn.send(Side.CLIENT, ...) puts bytes into the client's stream between the server's: the client
    receives them in order, the server's later bytes and FIN are translated so the connection goes on and
    closes cleanly; the engine's stream is what the server sent."""
    out = tmp_path / "app.jsonl"
    server = inline.s.popen(sys.executable, "-c", textwrap.dedent(TALK_SERVER.format(addr=SERVER, port=TALK_PORT)))
    app = _app(tmp_path, "talk.py", TALK_APP)
    run = inline.run(app, "--stats", env={"MOS_TEST_OUT": str(out), "MOS_TEST_PORT": str(TALK_PORT)})
    try:
        time.sleep(0.3)
        r = inline.c.python(TALK_CLIENT.format(addr=SERVER, port=TALK_PORT), timeout=30)
        server.wait(timeout=30)
        _wait_end(out)
    finally:
        if server.poll() is None:
            server.kill()
        code = run.stop()
    assert code == 0, run.stderr
    got = json.loads(r.stdout.strip())
    assert got == "INJECTED\nPONG PING 1\nBYE PING 2\n", got
    recs = _records(out)
    assert {"sent": 14 + 20 + 20 + 9} in recs, recs
    ends = [x for x in recs if "end" in x]
    assert ends == [{"end": "FIN", "s2c": len("PONG PING 1\nBYE PING 2\n"), "c2s": 14}], recs
    assert run.counters("  af_xdp worker 0:")["xlat_frames"] > 0
    inline.assert_clean()


REWRITE_APP = """
    import json, os
    from mos import Event, Side
    OUT = os.environ["MOS_TEST_OUT"]
    OLD = os.environ["MOS_TEST_OLD"].encode()
    NEW = os.environ["MOS_TEST_NEW"].encode()

    def _data(conn, ev):
        if ev.side is not Side.CLIENT:
            return
        p = conn.last_packet.payload
        at = p.find(OLD)
        if at >= 0:
            n = conn.set_last_packet(p[at:].replace(OLD, NEW, 1), offset=at, layer="payload", resize=True)
            if os.environ.get("MOS_TEST_LOSE"):
                conn.drop_last_packet()  # lost after the box: the sender's retransmission must be rewritten alike
            with open(OUT, "a") as f:
                f.write(json.dumps({"rewrite": n, "before": len(p)}) + "\\n")

    def _end(conn, ev):
        with open(OUT, "a") as f:
            f.write(json.dumps({"end": ev.reason.name}) + "\\n")

    def init(mon):
        mon.on(Event.CONN_NEW_DATA, _data)
        mon.on(Event.CONN_END, _end)
"""

# Frames to the client that carry `mark`, as the client's interface receives them: their length and the
# IP header's (AF_PACKET, no tcpdump).
SNIFF = """
    import json, socket, struct, sys, time
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind(({ifname!r}, 0))
    s.settimeout(0.2)
    end = time.time() + {secs}
    print("ready", flush=True)
    while time.time() < end:
        try:
            f = s.recv(65535)
        except socket.timeout:
            continue
        if {mark!r} in f and f[12:14] == b"\\x08\\x00":
            ihl = (f[14] & 15) * 4
            total = struct.unpack_from("!H", f, 16)[0]
            csum = 0
            for i in range(0, ihl, 2):
                csum += struct.unpack_from("!H", f, 14 + i)[0]
            while csum > 0xFFFF:
                csum = (csum & 0xFFFF) + (csum >> 16)
            print(json.dumps({{"frame": len(f), "ip_total": total, "ip_csum_ok": csum == 0xFFFF}}), flush=True)
            break
"""


@pytest.mark.netns
@pytest.mark.parametrize("new,lose", [("SimpleHTTP-rewritten-by-mos-xdp-to-a-much-longer-value", False),
                                      ("S", False), ("SimpleHTTP-rewritten-and-lost", True)],
                         ids=["longer", "shorter", "longer-lost"])
def test_resizing_rewrite_of_a_response_header(inline: Inline, tmp_path: Path, new: str,  # noqa: F811
                                               lose: bool) -> None:
    """An inline app rewrites the response's Server header to a longer (shorter) one during a 24 MB
    transfer: curl receives a consistent response (the body intact, the header rewritten, exit 0) and
    the connection closes cleanly (FIN); the rewritten frame's IPv4 total length is its length. Lost (the
    app drops the rewritten frame): the server's retransmission of the segment is rewritten alike, and
    the client's SACKs of the later bytes are translated back."""
    out, body, head = tmp_path / "app.jsonl", tmp_path / "big.bin", tmp_path / "headers.txt"
    app = _app(tmp_path, "rewrite.py", REWRITE_APP)
    run = inline.run(app, "--stats", env={"MOS_TEST_OUT": str(out), "MOS_TEST_OLD": "SimpleHTTP",
                                          "MOS_TEST_NEW": new, **({"MOS_TEST_LOSE": "1"} if lose else {})})
    sniff = None
    try:
        lc = "lc" + inline.mi[2:]  # (the fixture names the client's end after the middle box's)
        sniff = inline.c.popen(sys.executable, "-c", textwrap.dedent(SNIFF.format(
            ifname=lc, secs=20, mark=b"Server: " + new.encode())), stdout=subprocess.PIPE, text=True)
        assert sniff.stdout is not None and sniff.stdout.readline().strip() == "ready"
        r = inline.c.run("curl", "-sS", "-D", str(head), "-o", str(body), "--max-time", "60",
                         f"http://{SERVER}:{PORT}/big.bin", check=False, timeout=90)
        line = sniff.stdout.readline()
        _wait_end(out)
    finally:
        if sniff is not None and sniff.poll() is None:
            sniff.kill()
        code = run.stop()
    assert code == 0, run.stderr
    assert r.returncode == 0, r.stderr
    assert body.read_bytes() == (inline.www / "big.bin").read_bytes()
    assert f"Server: {new}" in head.read_text()
    recs = _records(out)
    [rw] = [x for x in recs if "rewrite" in x]
    assert [x["end"] for x in recs if "end" in x] == ["FIN"], (recs, run.stderr)
    frame = json.loads(line)
    assert frame["ip_total"] == frame["frame"] - 14 and frame["ip_csum_ok"], frame
    af = run.counters("  af_xdp worker 0:")
    assert af["rewrites"] == 1 and af["xlat_frames"] > 1000, af
    assert af.get("xlat_replayed", 0) == (1 if lose else 0) and af.get("xlat_unreplayed", 0) == 0, af
    assert rw["rewrite"] > 0
    inline.assert_clean()


# ---- offline ---------------------------------------------------------------------------------------------


def _capture(tmp_path: Path) -> tuple:
    c = Conv()
    c.handshake()
    c.send(True, REQ)
    before = dict(c.nxt)  # when the request is delivered: what each side has sent
    resp = b"HTTP/1.1 200 OK\r\n\r\n" + payload("R", 3000)
    c.send(False, resp)
    c.close()
    return c.built(REQ, resp).write(tmp_path / "conv.pcap"), before


def _valid(frame: bytes) -> Any:
    """The frame parsed by scapy, after checking its IP and TCP checksums."""
    p = Ether(frame)
    again = p.copy()
    del again[IP].chksum
    del again[TCP].chksum
    assert bytes(Ether(bytes(again))) == frame, "a checksum is wrong"
    assert p[IP].len == len(frame) - 14
    return p


def test_offline_frames_are_recorded(tmp_path: Path) -> None:
    """On a capture, what conn.send / conn.reset / send_packet would send is recorded: valid frames whose
    seq/ack are what the tracker says each endpoint expects; the reset ends the connection with RST."""
    pcap, nxt = _capture(tmp_path)
    mon = Monitor()
    ends: List[str] = []
    seen: Dict[str, int] = {}

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn: Any, ev: Any) -> None:
        if ev.side is Side.SERVER and not seen:
            seen["send1"] = conn.send(Side.CLIENT, b"injected!")
            seen["send2"] = conn.send(Side.CLIENT, b"again", flags="A")
            conn.reset()
            mon.send_packet(b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + b"raw")

    @mon.on(Event.CONN_END)
    def end(conn: Any, ev: Any) -> None:
        ends.append(ev.reason.name)

    mon.run(PcapSource(str(pcap)))
    frames = mon.sent()
    assert len(frames) == 5 and mon.stats()["injected_packets"] == 5 and mon.stats()["conns_reset"] == 1
    assert ends[0] == "RST"
    p1, p2, r_cli, r_svr = (_valid(f) for f in frames[:4])
    cseq, sseq = nxt[True], nxt[False]
    for p in (p1, p2, r_cli):  # to the client, as the server
        assert (p[IP].src, p[IP].dst, p[TCP].sport, p[TCP].dport) == ("10.10.0.2", "10.10.0.1", 80, 40000)
        assert p[Ether].dst == "02:00:00:00:00:01" and p[Ether].src == "02:00:00:00:00:02"
        assert p[TCP].ack == cseq
    assert (p1[TCP].seq, bytes(p1[TCP].payload), str(p1[TCP].flags)) == (sseq, b"injected!", "PA")
    assert (p2[TCP].seq, bytes(p2[TCP].payload), str(p2[TCP].flags)) == (sseq + 9, b"again", "A")
    assert (r_cli[TCP].seq, str(r_cli[TCP].flags), r_cli[TCP].window) == (sseq + 14, "RA", 0)
    assert (r_svr[IP].src, r_svr[TCP].seq, r_svr[TCP].ack, str(r_svr[TCP].flags)) == ("10.10.0.1", cseq, sseq, "RA")
    assert frames[4].endswith(b"raw")
    out = tmp_path / "sent.pcap"
    assert mon.write_sent(str(out)) == 5
    assert struct.unpack_from("<I", out.read_bytes())[0] == 0xA1B2C3D4


def test_offline_bad_inputs(tmp_path: Path) -> None:
    """Bad input gets one clear MosError: unknown flags, a payload too big for a frame, a non-bytes
    payload, Side.BOTH, a reset or send on an ended connection, a second reset, a bad raw frame."""
    pcap, _ = _capture(tmp_path)
    mon = Monitor()
    errors: Dict[str, str] = {}

    def expect(name: str, fn: Any) -> None:
        try:
            fn()
        except MosError as e:
            errors[name] = str(e)
        else:
            errors[name] = "no error"

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn: Any, ev: Any) -> None:
        if errors:
            return
        expect("flags", lambda: conn.send(Side.CLIENT, b"x", flags="PAX"))
        expect("big", lambda: conn.send(Side.CLIENT, b"x" * 5000))
        expect("type", lambda: conn.send(Side.CLIENT, "text"))
        expect("both", lambda: conn.send(Side.BOTH, b"x"))
        conn.reset()
        expect("twice", lambda: conn.reset())
        expect("send_after_reset", lambda: conn.send(Side.SERVER, b"x"))
        expect("short_frame", lambda: mon.send_packet(b"abc"))

    @mon.on(Event.CONN_END)
    def end(conn: Any, ev: Any) -> None:
        if "ended" not in errors:
            expect("ended", lambda: conn.reset())
            expect("ended_send", lambda: conn.send(Side.CLIENT, b"x"))

    mon.run(PcapSource(str(pcap)))
    assert mon.handler_errors == 0
    assert "unknown TCP flag 'X'" in errors["flags"]
    assert "5000 bytes of payload do not fit" in errors["big"]
    assert "payload must be bytes" in errors["type"]
    assert "Side.BOTH" in errors["both"]
    for k in ("twice", "send_after_reset", "ended", "ended_send"):
        assert "has ended" in errors[k], (k, errors[k])
    assert "14 to 4096 bytes" in errors["short_frame"]


def test_offline_ipv6_vlan_segments(tmp_path: Path) -> None:
    """An IPv6 connection in a VLAN: the recorded RSTs carry the VLAN tag, the IPv6 payload length and a
    valid TCP checksum."""
    from scapy.all import Dot1Q, IPv6

    c = Conv(cip="fd00::1", sip="fd00::2", vlan=(100,))
    c.handshake()
    c.send(True, REQ)
    nxt = dict(c.nxt)
    c.send(False, b"HTTP/1.1 200 OK\r\n\r\nbody")
    c.close()
    pcap = c.built().write(tmp_path / "v6.pcap")
    mon = Monitor()

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn: Any, ev: Any) -> None:
        if ev.side is Side.SERVER and conn.alive and not mon.sent():
            conn.reset()

    mon.run(PcapSource(str(pcap)))
    to_cli, to_svr = (Ether(f) for f in mon.sent())
    for p, seq, dst in ((to_cli, nxt[False], "fd00::1"), (to_svr, nxt[True], "fd00::2")):
        assert p[Dot1Q].vlan == 100 and p[IPv6].dst == dst and p[IPv6].plen == len(p[IPv6].payload)
        assert p[TCP].seq == seq and str(p[TCP].flags) == "RA"
        again = p.copy()
        del again[TCP].chksum
        assert Ether(bytes(again))[TCP].chksum == p[TCP].chksum
