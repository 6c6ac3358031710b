"""Real traffic: curl fetches a random file from an HTTP server across a veth pair between two network
namespaces while tcpdump captures on the server's veth; `mos-xdp streams -o` must give back the file
byte for byte (s2c = HTTP headers + file) and the GET request (c2s). Needs root."""

from __future__ import annotations

import os

import pytest

from tests.tools.netns import CLIENT4, CLIENT6, SERVER4, SERVER6, NetnsPair

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PORT = 8080


@pytest.fixture
def netns_pair():
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with NetnsPair() as pair:
        yield pair


def capture_fetches(pair: NetnsPair, tmp_path, names, v6: bool = False):
    www = tmp_path / "www"
    www.mkdir()
    files = {}
    for i, name in enumerate(names):
        files[name] = os.urandom(2 * 1024 * 1024 + 1000 * i + 17)
        (www / name).write_bytes(files[name])
    pair.start_http_server(www, PORT, v6=v6)
    pcap = tmp_path / "cap.pcap"
    cap = pair.start_capture(pcap, PORT)
    host = f"[{SERVER6}]" if v6 else SERVER4
    fetches = [pair.fetch(f"http://{host}:{PORT}/{n}", tmp_path / f"got-{n}") for n in names]
    for f in fetches:
        assert f.wait(timeout=120) == 0, f.stderr.read()
    dropped = pair.stop_capture(cap, pcap)
    assert dropped == 0, "tcpdump lost packets: the capture is not usable"
    for n in names:
        assert (tmp_path / f"got-{n}").read_bytes() == files[n]  # the fixture itself worked
    return pcap, files


def check_streams(run_streams, pcap, files, v6: bool):
    rows, out = run_streams(pcap)
    assert len(rows) == len(files), rows
    server = f"[{SERVER6}]:{PORT}" if v6 else f"{SERVER4}:{PORT}"
    seen = set()
    for r in rows:
        assert r["server"] == server
        assert r["client"].rsplit(":", 1)[0] == (f"[{CLIENT6}]" if v6 else CLIENT4)
        c2s = (out / f"{r['id']}.c2s").read_bytes()
        s2c = (out / f"{r['id']}.s2c").read_bytes()
        assert c2s.startswith(b"GET /") and c2s.endswith(b"\r\n\r\n")
        name = c2s.split(b" ", 2)[1].decode().lstrip("/")
        head, sep, body = s2c.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.")
        assert body == files[name], f"{name}: {len(body)} bytes vs {len(files[name])}"
        assert r["c2s_gaps"] == [] and r["s2c_gaps"] == []
        assert r["end"] == "FIN"
        seen.add(name)
    assert seen == set(files)


def test_single_fetch_ipv4(netns_pair, tmp_path, run_streams):
    pcap, files = capture_fetches(netns_pair, tmp_path, ["blob.bin"])
    check_streams(run_streams, pcap, files, v6=False)


def test_three_parallel_fetches(netns_pair, tmp_path, run_streams):
    pcap, files = capture_fetches(netns_pair, tmp_path, ["a.bin", "b.bin", "c.bin"])
    check_streams(run_streams, pcap, files, v6=False)


def test_fetch_ipv6(netns_pair, tmp_path, run_streams):
    pcap, files = capture_fetches(netns_pair, tmp_path, ["v6.bin"], v6=True)
    check_streams(run_streams, pcap, files, v6=True)
