"""TLS ClientHellos for the semantics tests: a builder of real-looking ones (a browser's extensions, a
post-quantum key share that makes it span two segments) and the SNI parser an SNI logger would use.

The parser accepts only a complete record, as a TLS library does: an app that hands it the first segment
of a ClientHello split in two gets None, so a test sees whether the app was given the whole record.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Iterator, List, Optional, Tuple

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
EXT_SERVER_NAME = 0x0000
EXT_PADDING = 0x0015
# IANA group numbers: X25519MLKEM768 (draft-kwiatkowski-tls-ecdhe-mlkem), x25519, secp256r1
GROUP_X25519MLKEM768, GROUP_X25519, GROUP_P256 = 0x11EC, 0x001D, 0x0017
MLKEM768_X25519_SHARE = 1184 + 32  # an ML-KEM-768 encapsulation key, then an x25519 public key
RECORD_HEADER = 5


def _pseudo_random(tag: str, n: int) -> bytes:
    """Deterministic bytes that look random (the random, the session id, the key shares)."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{tag}/{i}".encode()).digest()
        i += 1
    return out[:n]


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def _vec16(body: bytes) -> bytes:
    return struct.pack("!H", len(body)) + body


def _vec8(body: bytes) -> bytes:
    return struct.pack("!B", len(body)) + body


def client_hello(sni: str, size: int, post_quantum: bool = True) -> bytes:
    """A TLS 1.3 ClientHello record of exactly ``size`` bytes naming ``sni`` (filled to size with the
    padding extension, RFC 7685, as browsers do). ``post_quantum``: a hybrid ML-KEM key share besides the
    x25519 one, as current browsers send (the reason their ClientHellos exceed one segment)."""
    groups = [GROUP_X25519MLKEM768, GROUP_X25519, GROUP_P256] if post_quantum else [GROUP_X25519, GROUP_P256]
    shares = b""
    if post_quantum:
        shares += struct.pack("!H", GROUP_X25519MLKEM768) + _vec16(_pseudo_random(sni + "/pq", MLKEM768_X25519_SHARE))
    shares += struct.pack("!H", GROUP_X25519) + _vec16(_pseudo_random(sni + "/x25519", 32))
    name = sni.encode()
    exts = b"".join([
        _ext(EXT_SERVER_NAME, _vec16(b"\x00" + _vec16(name))),
        _ext(0x0017, b""),                                             # extended_master_secret
        _ext(0xFF01, b"\x00"),                                         # renegotiation_info
        _ext(0x000A, _vec16(b"".join(struct.pack("!H", g) for g in groups))),  # supported_groups
        _ext(0x000B, _vec8(b"\x00")),                                  # ec_point_formats: uncompressed
        _ext(0x0023, b""),                                             # session_ticket
        _ext(0x0010, _vec16(_vec8(b"h2") + _vec8(b"http/1.1"))),       # ALPN
        _ext(0x0005, b"\x01\x00\x00\x00\x00"),                         # status_request (OCSP)
        _ext(0x000D, _vec16(struct.pack("!8H", 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806,
                                        0x0601))),                     # signature_algorithms
        _ext(0x0012, b""),                                             # signed_certificate_timestamp
        _ext(0x0033, _vec16(shares)),                                  # key_share
        _ext(0x002D, _vec8(b"\x01")),                                  # psk_key_exchange_modes: psk_dhe_ke
        _ext(0x002B, _vec8(struct.pack("!2H", 0x0304, 0x0303))),       # supported_versions
    ])
    suites = struct.pack("!16H", 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
                         0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035, 0x000A)
    head = (struct.pack("!H", 0x0303) + _pseudo_random(sni + "/random", 32)
            + _vec8(_pseudo_random(sni + "/session", 32)) + _vec16(suites) + _vec8(b"\x00"))

    def record(extensions: bytes) -> bytes:
        body = head + _vec16(extensions)
        hs = struct.pack("!B", HANDSHAKE_CLIENT_HELLO) + struct.pack("!I", len(body))[1:] + body
        return struct.pack("!BHH", RECORD_HANDSHAKE, 0x0301, len(hs)) + hs

    short = size - len(record(exts)) - 4  # the padding extension's header is 4 bytes
    if short < 0:
        raise ValueError(f"a ClientHello for {sni!r} needs at least {size - short} bytes, not {size}")
    out = record(exts + _ext(EXT_PADDING, bytes(short)))
    assert len(out) == size
    return out


def _extensions(body: bytes) -> Iterator[Tuple[int, bytes]]:
    pos = 2 + 32                                   # client_version, random
    pos += 1 + body[pos]                           # session id
    pos += 2 + struct.unpack_from("!H", body, pos)[0]  # cipher suites
    pos += 1 + body[pos]                           # compression methods
    (total,) = struct.unpack_from("!H", body, pos)
    pos += 2
    end = pos + total
    if end != len(body):
        raise ValueError("extensions do not end with the ClientHello")
    while pos < end:
        kind, n = struct.unpack_from("!HH", body, pos)
        yield kind, body[pos + 4:pos + 4 + n]
        pos += 4 + n


def sni_of(data: bytes) -> Optional[str]:
    """The server name of a ClientHello record at the start of ``data``; None while the record is
    incomplete (or when ``data`` is not a ClientHello, or names no server)."""
    if len(data) < RECORD_HEADER + 4 or data[0] != RECORD_HANDSHAKE:
        return None
    (rec_len,) = struct.unpack_from("!H", data, 3)
    if len(data) < RECORD_HEADER + rec_len:
        return None
    hs = data[RECORD_HEADER:RECORD_HEADER + rec_len]
    if hs[0] != HANDSHAKE_CLIENT_HELLO or int.from_bytes(hs[1:4], "big") != len(hs) - 4:
        return None
    names: List[str] = []
    for kind, ext in _extensions(hs[4:]):
        if kind == EXT_SERVER_NAME:
            pos = 2
            while pos + 3 <= len(ext):
                (n,) = struct.unpack_from("!H", ext, pos + 1)
                if ext[pos] == 0:
                    names.append(ext[pos + 3:pos + 3 + n].decode())
                pos += 3 + n
    return names[0] if names else None
