"""The apps in apps/ over captures built here: what a user of `mos-xdp run` sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.pcaps import M32, Built, Conv

ROOT = Path(__file__).resolve().parents[1]


def run_app(app: str, pcap: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mos.cli", "run", str(ROOT / "apps" / app), "--pcap", str(pcap),
                           "--no-progress", *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def request(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()


def http_captures() -> Built:
    """Three connections: a request line split in three segments sent out of order with a retransmission
    carrying different bytes (policy first keeps the original), two pipelined requests (a POST with a body
    and a GET), and a request whose line is split across segments arriving in order."""
    recs = []
    # 1: split, out of order, one piece retransmitted with other bytes
    c = Conv(cport=40001, cisn=M32 - 20, t0=1000.0)  # sequence numbers wrap inside the request
    c.handshake()
    r1 = request("/a/very/long/path?q=1", "one.example")
    s0 = c.off_seq(True, 0)
    a, b, rest = r1[:7], r1[7:30], r1[30:]
    c.tcp(True, "PA", seq=s0 + 7, payload=b)
    c.tcp(True, "PA", seq=s0 + 30, payload=rest)
    c.tcp(True, "PA", seq=s0, payload=a)
    c.tcp(True, "PA", seq=s0 + 7, payload=b"X" * len(b))  # inconsistent retransmission: ignored (first)
    c.nxt[True] = (s0 + len(r1)) % M32
    c.tcp(False, "A")
    c.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c.close()
    recs += c.records
    # 2: pipelined POST with body, then GET, in odd segment boundaries
    c = Conv(cport=40002, t0=1001.0)
    c.handshake()
    body = b"name=value&x=" + b"y" * 300
    post = (b"POST /submit HTTP/1.1\r\nHost: two.example\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)
    data = post + request("/after-post", "two.example")
    c.send(True, data, mss=37)
    c.send(False, b"HTTP/1.1 204 No Content\r\n\r\n")
    c.close()
    recs += c.records
    # 3: request line split in order
    c = Conv(cport=40003, t0=1002.0)
    c.handshake()
    c.send(True, request("/in/order", "three.example"), mss=5)
    c.close()
    recs += c.records
    return Built(sorted(recs, key=lambda r: r[0]))


def test_http_log_reads_requests_from_the_reassembled_stream(tmp_path):
    pcap = http_captures().write(tmp_path / "http.pcap")
    out = run_app("http_log.py", pcap)
    assert out.returncode == 0, out.stderr
    lines = [ln.split(" ", 3) for ln in out.stdout.splitlines()]
    assert lines == [
        ["1", "GET", "one.example", "/a/very/long/path?q=1"],
        ["2", "POST", "two.example", "/submit"],
        ["2", "GET", "two.example", "/after-post"],
        ["3", "GET", "three.example", "/in/order"],
    ]
    assert "4 requests, 0 unparsable" in out.stderr


def test_http_log_policy_last_takes_the_retransmitted_bytes(tmp_path):
    pcap = http_captures().write(tmp_path / "http.pcap")
    out = run_app("http_log.py", pcap, "--policy", "last")
    # the retransmission of bytes 7..30 came while they were held out of order? No: they were delivered
    # already (the hole filled before the retransmission), so even `last` cannot change them.
    assert out.stdout.splitlines()[0] == "1 GET one.example /a/very/long/path?q=1"


def test_midstat_table_has_both_states(tmp_path):
    pcap = http_captures().write(tmp_path / "http.pcap")
    out = run_app("midstat.py", pcap)
    assert out.returncode == 0, out.stderr
    final = out.stdout.split("-- 3 connections")[1].splitlines()
    rows = [ln.split() for ln in final if ln.strip() and ln.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    for r in rows:
        assert r[1].startswith("10.10.0.1:4000") and r[2] == "10.10.0.2:80"
        assert r[3:] == ["TIME_WAIT", "CLOSED", "FIN"]


def test_run_reports_a_failing_handler_and_goes_on(tmp_path):
    pcap = http_captures().write(tmp_path / "http.pcap")
    app = tmp_path / "boom.py"
    app.write_text(
        "from mos import Event\n"
        "seen = []\n"
        "def init(mon):\n"
        "    @mon.on(Event.CONN_END)\n"
        "    def end(conn, ev):\n"
        "        seen.append(conn.id)\n"
        "        if conn.id == 2:\n"
        "            raise ValueError('boom')\n"
        "def finish(mon):\n"
        "    print('ended', seen)\n"
    )
    out = subprocess.run([sys.executable, "-m", "mos.cli", "run", str(app), "--pcap", str(pcap)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1
    assert "ended [1, 2, 3]" in out.stdout
    assert "ValueError: boom" in out.stderr and "connection 2" in out.stderr
    strict = subprocess.run([sys.executable, "-m", "mos.cli", "run", str(app), "--pcap", str(pcap), "--strict"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert strict.returncode != 0 and "ended" not in strict.stdout
    # the handler's own traceback once, then one line: no second traceback through the CLI
    assert strict.stderr.count("Traceback") == 1 and "ValueError: boom" in strict.stderr
    assert strict.stderr.strip().splitlines()[-1] == "Error: stopped at the first handler error (--strict)"


def test_run_user_mistakes_get_one_line(tmp_path):
    pcap = http_captures().write(tmp_path / "http.pcap")
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_module_anywhere\n")
    noinit = tmp_path / "noinit.py"
    noinit.write_text("x = 1\n")
    badinit = tmp_path / "badinit.py"
    badinit.write_text("def init(monitor):\n    x = 1\n    raise RuntimeError('no ' + str(x))\n")
    midstat = str(ROOT / "apps" / "midstat.py")
    cases = [
        ([str(bad), "--pcap", str(pcap)], "failed to import at bad.py:1: ModuleNotFoundError"),
        ([str(badinit), "--pcap", str(pcap)], "init(monitor) failed at badinit.py:3: RuntimeError: no 1"),
        ([str(tmp_path), "--pcap", str(pcap)], "is a directory"),
        ([midstat, "--pcap", str(pcap), "--workers", "2"], "--workers: for live runs (--iface)"),
        ([midstat, "--pcap", str(pcap), "--peer", "x", "--ring", "1024"], "--peer, --ring: for live runs"),
        ([str(bad), "--pcap", str(pcap)], "failed to import"),
        ([str(noinit), "--pcap", str(pcap)], "must define init"),
        ([str(tmp_path / "missing.py"), "--pcap", str(pcap)], "no such app file"),
        ([str(ROOT / "apps" / "midstat.py"), "--pcap", str(tmp_path / "missing.pcap")], "no such file"),
        ([str(ROOT / "apps" / "midstat.py"), "--pcap", str(bad)], "not a pcap"),
        ([str(ROOT / "apps" / "midstat.py")], "exactly one of"),
    ]
    for args, msg in cases:
        out = subprocess.run([sys.executable, "-m", "mos.cli", "run", *args], capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
        assert out.returncode != 0, args
        assert msg in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr


def test_demo_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "demo"), "-o", str(tmp_path)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "GET www.example.com /split/request?x=1" in out.stdout
    assert "6 connections" in out.stdout
    assert (tmp_path / "streams" / "index.jsonl").read_text().count("\n") == 6


def test_firewall_takes_its_patterns_as_arguments(tmp_path):
    """--pattern (repeatable, after -- or as --arg) replaces the default /etc/passwd; a pattern straddling
    two segments that arrived out of order (`/a/` + `very`) is found in the reassembled stream."""
    pcap = http_captures().write(tmp_path / "http.pcap")
    out = run_app("firewall.py", pcap)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["firewall: 0 connection(s) dropped"]
    out = run_app("firewall.py", pcap, "--arg", "pattern=/in/order", "--", "--pattern", "/a/very")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "firewall: would drop (not live) connection 1 10.10.0.1:40001 -> 10.10.0.2:80: '/a/very'",
        "firewall: would drop (not live) connection 3 10.10.0.1:40003 -> 10.10.0.2:80: '/in/order'",
        "firewall: 2 connection(s) dropped",
    ]
    out = run_app("firewall.py", pcap, "--", "--pattern=")
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [
        "Error: app argument --pattern '': an empty pattern would match every connection"]


def test_midstat_interval_is_an_argument(tmp_path):
    pcap = http_captures().write(tmp_path / "http.pcap")

    def ticks(*args: str) -> int:
        out = run_app("midstat.py", pcap, *args)
        assert out.returncode == 0, out.stderr
        assert "-- 3 connections" in out.stdout
        return out.stdout.count(" live connections")

    assert ticks() == 2  # every second of packet time over the capture's two seconds
    assert ticks("--", "--interval", "0") == 0
    assert ticks("--arg", "interval=1.5") == 1
    assert ticks("--arg", "interval=10") == 0
    out = run_app("midstat.py", pcap, "--", "--interval", "-1")
    assert out.returncode != 0 and "app argument --interval '-1': expected seconds" in out.stderr


def test_demo_live_hands_each_app_its_arguments(tmp_path):
    pcap = http_captures().write(tmp_path / "http.pcap")
    out = run_app("demo_live.py", pcap, "--", "--pattern", "two.example", "--interval", "0")
    assert out.returncode == 0, out.stderr
    assert "firewall: would drop (not live) connection 2 10.10.0.1:40002 -> 10.10.0.2:80: 'two.example'" in out.stdout
    assert "firewall: 1 connection(s) dropped" in out.stdout
    assert "3 GET three.example /in/order" in out.stdout and "4 requests" in out.stderr
    assert " live connections" not in out.stdout and "-- 3 connections" in out.stdout


def test_the_apps_document_their_arguments():
    def app_help(app: str) -> str:
        out = subprocess.run([sys.executable, "-m", "mos.cli", "run", str(ROOT / "apps" / app), "--app-help"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        return out.stdout

    fw, ms, demo = app_help("firewall.py"), app_help("midstat.py"), app_help("demo_live.py")
    assert "--pattern BYTES" in fw and "default: /etc/passwd" in fw and "--block PREFIX" in fw
    assert "--interval SECONDS" in ms and "default: 1.0" in ms
    for opt in ("--pattern", "--block", "--interval"):
        assert opt in demo
    assert "declares no arguments" in app_help("http_log.py")


def test_simple_firewall_rules_decide_each_connection(tmp_path):
    """mOS's simple_firewall rule syntax: the first matching rule decides, counted; no match accepts."""
    pcap = http_captures().write(tmp_path / "http.pcap")
    rules = tmp_path / "fw.rules"
    rules.write_text("# action client server ports\n"
                     "DROP    10.10.0.1/32  10.10.0.2  dport:80 sport:40001   # only the first connection\n"
                     "ACCEPT  10.10.0.0/24  10.10.0.0/24\n"
                     "DROP    0.0.0.0/0     0.0.0.0/0\n")
    out = run_app("simple_firewall.py", pcap, "--", "--rules", str(rules), "--interval", "0")
    assert out.returncode == 0, out.stderr
    rows = [ln.split() for ln in out.stdout.splitlines() if ln.split() and ln.split()[0].isdigit()]
    assert [(r[0], r[1], r[2]) for r in rows] == [("1", "1", "DROP"), ("2", "2", "ACCEPT"), ("3", "0", "DROP")]


def test_simple_firewall_bad_rule_files_are_one_line(tmp_path):
    pcap = http_captures().write(tmp_path / "http.pcap")
    cases = {"PERMIT 10.0.0.0/8 10.0.0.1\n": "fw.rules:1: expected ACCEPT|DROP",
             "\n\nDROP 10.0.0.0/33 10.0.0.1\n": "fw.rules:3:",
             "DROP 10.0.0.0/8 10.0.0.1 dport:70000\n": "a port is sport:N or dport:N"}
    for text, said in cases.items():
        (tmp_path / "fw.rules").write_text(text)
        out = run_app("simple_firewall.py", pcap, "--", "--rules", str(tmp_path / "fw.rules"))
        assert out.returncode != 0 and said in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = run_app("simple_firewall.py", pcap)
    assert out.returncode != 0 and "--rules is required" in out.stderr


def test_run_sent_pcap_writes_what_the_app_sent(tmp_path):
    """`run --sent-pcap` over a capture: the RSTs conn.reset() would have sent, one to each endpoint."""
    pcap = http_captures().write(tmp_path / "http.pcap")
    app = tmp_path / "reset.py"
    app.write_text("from mos import Event, Side\n"
                   "def init(mon):\n"
                   "    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)\n"
                   "    def data(conn, ev):\n"
                   "        if conn.ctx is None and not conn.info()['picked_up']:  # seen from its SYN, once\n"
                   "            conn.ctx = 'reset'\n"
                   "            conn.reset()\n")
    sent = tmp_path / "sent.pcap"
    out = subprocess.run([sys.executable, "-m", "mos.cli", "run", str(app), "--pcap", str(pcap), "--no-progress",
                          "--sent-pcap", str(sent)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    from scapy.all import TCP, rdpcap  # noqa: PLC0415

    frames = rdpcap(str(sent))
    assert f"{len(frames)} frame(s) the app sent written to" in out.stderr, out.stderr
    assert len(frames) >= 4 and len(frames) % 2 == 0 and all(f[TCP].flags == "RA" for f in frames)
    for a, b in zip(frames[::2], frames[1::2]):  # one RST to each endpoint of the connection
        assert (a[TCP].sport, a[TCP].dport) == (b[TCP].dport, b[TCP].sport)
    out = subprocess.run([sys.executable, "-m", "mos.cli", "run", str(app), "--iface", "lo", "--sent-pcap",
                          str(sent)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode != 0 and "--sent-pcap: for captures" in out.stderr
