"""userspace/defrag.c against PcapPlusPlus's IP reassembly expectations (third-party corpus).

The corpus lives beside the repository: <repo>/../shared/corpus/pcapplusplus (see its README.md).
A small C driver (tests/c/defrag_pcap.c) reads a capture with libpcap, feeds every IP fragment to
defrag_feed() and prints each reassembled datagram as `DONE <index> <l2 hex> <l3 hex>`, then the
counters.

Format of the expected files (checked against PcapPlusPlus's Tests/Packet++Test/Tests/
IPReassemblyTests.cpp, which loads them with readFileIntoBuffer): plain lowercase hex text, no
separators, no trailing newline, of the whole reassembled frame as PcapPlusPlus returns it: the link
header of the first fragment (Ethernet, plus the 802.1Q tag for frag_with_padding) followed by the
reassembled IP datagram. frag_with_padding_defragmented.dat is the same hex text despite its name.
Two documented differences from our output, normalised below:
- ip6_fragments_packet{1,2}.txt: PcapPlusPlus's test overwrites the IPv6 payload length with 737 /
  1448 ("small fix for payload length which is wrong in the original packet": the captured
  fragments carry 4 trailing bytes inside their payload length, so the real reassembled payload is
  741 / 1452 bytes, which is what defrag writes). The file holds all 741 / 1452 bytes.
- frag_with_padding: its fragments carry DF. PcapPlusPlus zeroes the whole flags/offset word; defrag
  clears only MF and the offset and keeps DF, so the header checksum differs too.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PPP = CORPUS / "pcapplusplus"

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed"
    out = tmp_path_factory.mktemp("defrag") / "defrag_pcap"
    # defrag.c with what it uses of the engine (its checksums): the engine's sources, as tests/c/Makefile
    # lists them
    engine = re.search(r"^ENGINE_SRCS := (.*)$", (REPO / "tests" / "c" / "Makefile").read_text(), re.M)
    assert engine is not None
    srcs = [str(REPO / "tests" / "c" / "defrag_pcap.c"),
            *(str(REPO / "userspace" / f) for f in engine.group(1).split())]
    base = [cc, "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", f"-I{REPO / 'bpf'}", *srcs, "-lpcap", "-o",
            str(out)]
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    # Prefer a sanitized build (any out-of-bounds access or leak fails the run); fall back to a plain
    # one where the toolchain lacks the sanitizer runtimes.
    if subprocess.run(base[:1] + san + base[1:], capture_output=True).returncode != 0:
        r = subprocess.run(base, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    return out


def run(driver, pcap, *args):
    r = subprocess.run([str(driver), *args, str(PPP / pcap)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    done, errors, counters = [], [], {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if parts[0] == "DONE":
            done.append(
                (int(parts[1]), bytes.fromhex(parts[2] if len(parts) == 4 else ""), bytes.fromhex(parts[-1]))
            )
        elif parts[0] == "ERROR":
            errors.append(int(parts[1]))
        elif parts[0] == "COUNTERS":
            counters = {k: int(v) for k, v in (p.split("=") for p in parts[1:])}
    assert counters, r.stdout
    return done, errors, counters


def expected(name):
    text = (PPP / name).read_text().strip()
    return bytes.fromhex(text)


def ip_checksum(hdr: bytes) -> int:
    s = sum(int.from_bytes(hdr[i : i + 2], "big") for i in range(0, len(hdr), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def check_ipv4(l3: bytes):
    hl = (l3[0] & 0x0F) * 4
    assert int.from_bytes(l3[2:4], "big") == len(l3)
    assert int.from_bytes(l3[6:8], "big") & 0x3FFF == 0  # MF and offset cleared
    assert ip_checksum(l3[:hl]) == 0


def ipv4_id(l3: bytes) -> int:
    return int.from_bytes(l3[4:6], "big")


def by_ipv4_id(done):
    return {ipv4_id(l3): (l2, l3) for _, l2, l3 in done}


def test_ip4_fragments(driver):
    done, errors, c = run(driver, "ip4_fragments.pcap")
    assert errors == []
    # six datagrams (ids 0x1ea0..0x1ea5), 0x1ea3/0x1ea4/0x1ea5 with duplicated fragments
    got = by_ipv4_id(done)
    assert sorted(got) == list(range(0x1EA0, 0x1EA6))
    assert c["datagrams"] == 6 and c["overlaps"] == 12
    for _, (_, l3) in got.items():
        check_ipv4(l3)
    # PcapPlusPlus's packet1/4/6 = ids 0x1ea0/0x1ea3/0x1ea4 (its numbering counts the unfragmented
    # packets in the capture too)
    for name, ip_id in (
        ("ip4_fragments_packet1.txt", 0x1EA0),
        ("ip4_fragments_packet4.txt", 0x1EA3),
        ("ip4_fragments_packet6.txt", 0x1EA4),
    ):
        l2, l3 = got[ip_id]
        assert l2 + l3 == expected(name), name
    # the duplicated last fragments of 0x1ea3 and 0x1ea4 arrive after completion and stay held
    assert c["mem_used"] > 0


def test_ip6_fragments(driver):
    done, errors, c = run(driver, "ip6_fragments.pcap")
    assert errors == [] and c["datagrams"] == 4 and len(done) == 4
    for name, idx, fixed_plen in (
        ("ip6_fragments_packet1.txt", 0, 737),
        ("ip6_fragments_packet2.txt", 1, 1448),
    ):
        _, l2, l3 = done[idx]
        assert int.from_bytes(l3[4:6], "big") == len(l3) - 40  # our payload length is the real one
        assert l3[6] == 17  # next header: UDP, fragment header gone
        exp = expected(name)
        patched = l3[:4] + fixed_plen.to_bytes(2, "big") + l3[6:]
        assert l2 + patched == exp, name
    assert c["mem_used"] == 0


HTTP_ORDERS = {
    "in_order": list(range(11)),
    "swap_0_1": [1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    "swap_5_9_and_2_6": [0, 1, 6, 3, 4, 9, 2, 7, 8, 5, 10],
    "swap_5_10": [0, 1, 2, 3, 4, 10, 6, 7, 8, 9, 5],
    "last_first": [10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    "reversed": list(range(10, -1, -1)),
    "duplicates": [0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10],
}


@pytest.mark.parametrize("order", sorted(HTTP_ORDERS))
def test_frag_http_req(driver, order):
    seq = HTTP_ORDERS[order]
    done, errors, c = run(driver, "frag_http_req.pcap", "-o", ",".join(map(str, seq)))
    assert errors == []
    assert len(done) == 1 and done[0][0] == seq[-1]
    _, l2, l3 = done[0]
    check_ipv4(l3)
    assert l2 + l3 == expected("frag_http_req_reassembled.txt")
    assert c["mem_used"] == 0


def test_frag_with_padding(driver):
    # fragments carry Ethernet padding (the offset-0 one is 28 bytes of IP in a 60-byte frame) and a
    # VLAN tag; the offset-0 fragment arrives last
    done, errors, c = run(driver, "frag_with_padding.pcap")
    assert errors == [] and len(done) == 1 and c["mem_used"] == 0
    _, l2, l3 = done[0]
    check_ipv4(l3)
    flags = int.from_bytes(l3[6:8], "big")
    assert flags == 0x4000  # DF kept
    exp = expected("frag_with_padding_defragmented.dat")
    hl = (l3[0] & 0x0F) * 4
    norm = bytearray(l3)
    norm[6:8] = b"\x00\x00"
    norm[10:12] = b"\x00\x00"
    norm[10:12] = ip_checksum(bytes(norm[:hl])).to_bytes(2, "big")
    assert l2 + bytes(norm) == exp


def test_ip4_bad_fragment(driver):
    # one MPLS-encapsulated IPv4 fragment claiming 3841 bytes with 42 captured: rejected, nothing held
    done, errors, c = run(driver, "ip4_bad_fragment.pcap")
    assert done == [] and errors == [0]
    assert c["bad_fragment"] == 1 and c["mem_used"] == 0


def test_limits_on_corpus(driver):
    # one datagram in flight: the capture's datagrams follow each other, so all six complete; the two
    # late duplicate last fragments (left held) are evicted by the next datagram's first fragment
    done, errors, c = run(driver, "ip4_fragments.pcap", "-n", "1")
    assert len(done) == 6 and c["memcap"] == 2 and c["frags_discarded"] == 2 and c["mem_used"] == 0
    # a 1 us timeout: fragments are 2-5 us apart, so every datagram but the last one times out
    done, errors, c = run(driver, "ip4_fragments.pcap", "-t", "1000")
    assert done == [] and c["timeouts"] == 49 and c["frags_discarded"] == 49 and c["mem_used"] > 0
    # a memcap too small for anything: every fragment dropped, nothing evicted
    done, errors, c = run(driver, "frag_http_req.pcap", "-m", "64")
    assert done == [] and c["memcap"] == 11 and c["mem_used"] == 0 and len(errors) == 11
    # room for part of the datagram only: the later fragments are dropped, the held ones stay
    done, errors, c = run(driver, "frag_http_req.pcap", "-m", "1400")
    assert done == [] and c["memcap"] == len(errors) > 0 and 0 < c["mem_used"] <= 1400
