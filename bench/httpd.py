"""The benchmark's HTTP server (standard library only; run inside the server namespace by run.py).

``GET /get/N`` answers N bytes of body; ``PUT /put`` reads the body and answers ``ok``. Bodies never
contain a zero byte, so a tool that writes streams to files with holes zero-filled (tcpflow) can be
credited with exactly the bytes it delivered: the non-zero bytes of its files. HTTP/1.0: one request
per connection, so every transfer is its own TCP connection. The server stops by itself after
``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_NO_ZERO = bytes([1]) + bytes(range(1, 256))  # byte 0 -> 1, the others unchanged
BLOCK = 1 << 24  # larger than any transfer: no body repeats itself


def make_block(seed: int) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(BLOCK).translate(_NO_ZERO)


class Handler(BaseHTTPRequestHandler):
    block = b""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            n = int(self.path.rsplit("/", 1)[1])
        except ValueError:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        off = (n * 7919) % BLOCK  # different transfers start at different places of the block
        view = memoryview(self.block)
        while n > 0:
            k = min(n, BLOCK - off, 1 << 18)
            self.wfile.write(view[off:off + k])
            n -= k
            off = (off + k) % BLOCK

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        n = int(self.headers.get("Content-Length", "0"))
        while n > 0:
            got = self.rfile.read(min(n, 1 << 18))
            if not got:
                break
            n -= len(got)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lifetime", type=float, default=600.0)
    a = ap.parse_args()
    Handler.block = make_block(a.seed)
    ThreadingHTTPServer.request_queue_size = 1024  # listen() backlog, read by the constructor
    srv = ThreadingHTTPServer((a.addr, a.port), Handler)
    srv.daemon_threads = True
    t = threading.Timer(a.lifetime, srv.shutdown)
    t.daemon = True
    t.start()
    print(f"ready {os.getpid()}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
