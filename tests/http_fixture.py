"""A web server on 127.0.0.1 that serves a folder, with the faults the remote-shard tests need.

``ShardServer(folder)`` serves ``folder`` over HTTP/1.0 (one request per connection), answers ``Range: bytes=N-``
requests with 206 unless ``ranges=False``, logs every request, and can misbehave per file name: ``drop_once``
sends the headers of the whole file but closes the connection after ``drop_after`` bytes of the body (once per
name),
``fail`` answers 500 every time.
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ShardServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        name = self.path.lstrip("/")
        requested = self.headers.get("Range")
        with srv.lock:
            srv.requests.append((name, requested))
            drop = name in srv.drop_once
            srv.drop_once.discard(name)
        path = srv.folder / name
        if name in srv.fail:
            self.send_error(500, "injected failure")
            return
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if requested and srv.ranges:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop:
            self.wfile.write(body[: srv.drop_after])
            self.wfile.flush()
            return  # HTTP/1.0: the connection closes after the handler, mid-body
        self.wfile.write(body)


class ShardServer(http.server.ThreadingHTTPServer):
    """Serves ``folder`` on 127.0.0.1 until :meth:`stop`; ``url`` is its base URL."""

    daemon_threads = True

    def __init__(self, folder: Path, ranges: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folder, self.ranges = Path(folder), ranges
        self.requests: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()
        self.drop_after = 3000
        self.fail: set[str] = set()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self, name: str) -> int:
        """How many times file ``name`` was requested."""
        with self.lock:
            return sum(1 for n, _ in self.requests if n == name)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
