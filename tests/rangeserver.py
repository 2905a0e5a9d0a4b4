"""A tiny HTTP/1.1 file server on 127.0.0.1 that honours ``Range`` (Python's http.server does
not), counts the bytes it serves, and can be told to fail: used by the remote-read tests and
benches in place of a dataset hub or an object store.  Start/stop it with ``with RangeServer(dir) as srv``."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeServer:
    """Serve the files of ``root`` at ``self.url + "/NAME"``.

    ``bytes_served`` / ``requests`` count body bytes and GET requests; ``log`` lists
    ``(name, start, stop)`` of each GET.  ``cut_after`` (set at any time): a GET whose body
    would pass that many bytes in total sends the headers, part of the body, then drops the
    connection (a server that stops mid-read).  ``rtt`` (seconds added before each response) and
    ``rate`` (bytes/s of the body) emulate a wide-area link for the benches.
    """

    def __init__(self, root: str | os.PathLike, *, rtt: float = 0.0, rate: float | None = None):
        self.root = os.fspath(root)
        self.rtt, self.rate = rtt, rate
        self.bytes_served = 0
        self.requests = 0
        self.log: list[tuple[str, int, int]] = []
        self.cut_after: int | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()  # headers and body go out as separate writes: no Nagle delay between them
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _target(self):
                name = self.path.split("?", 1)[0].lstrip("/")
                full = os.path.join(server.root, name)
                if "/" in name or name in ("", ".", "..") or not os.path.isfile(full):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None, None, 0
                return name, full, os.path.getsize(full)

            def do_HEAD(self):
                name, _, size = self._target()
                if name is None:
                    return
                time.sleep(server.rtt)
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):
                name, full, size = self._target()
                if name is None:
                    return
                start, stop, status = 0, size, 200
                m = _RANGE.match(self.headers.get("Range", ""))
                if m:
                    start = int(m.group(1))
                    stop = min(size, int(m.group(2)) + 1) if m.group(2) else size
                    if start >= size or stop <= start:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                with open(full, "rb") as fh:
                    fh.seek(start)
                    body = fh.read(stop - start)
                with server._lock:
                    server.requests += 1
                    server.log.append((name, start, stop))
                    cut = server.cut_after
                    allowed = len(body) if cut is None else max(0, min(len(body), cut - server.bytes_served))
                    server.bytes_served += allowed
                time.sleep(server.rtt + (len(body) / server.rate if server.rate else 0.0))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
                self.end_headers()
                self.wfile.write(body[:allowed])
                if allowed < len(body):
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that gave up (timeout): not news
                pass

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def reset(self) -> None:
        with self._lock:
            self.bytes_served = 0
            self.requests = 0
            self.log.clear()

    def __enter__(self) -> "RangeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
