"""`lvd synth --serve OUT`: serve a synthetic crawl over HTTP on loopback, misbehaving as recorded.

URL paths are the pool paths of truth.parquet. The `http` column says how each answers: `ok`
(200), `404`, `500`, `slow` (answers after `slow_seconds`, past a sane client timeout) or
`redirect` (302 to the same bytes under /direct/). Only 127.0.0.1 is bound.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.parquet as pq


class CrawlHandler(BaseHTTPRequestHandler):
    """Serves files under the crawl root, applying the recorded behaviour of each path."""

    def __init__(self, *args: object, root: Path, behaviours: dict[str, str], slow_seconds: float, **kwargs: object):
        self.root, self.behaviours, self.slow_seconds = root, behaviours, slow_seconds
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        rel = unquote(urlparse(self.path).path).lstrip("/")
        direct = rel.startswith("direct/")
        rel = rel.removeprefix("direct/")
        behaviour = "ok" if direct else self.behaviours.get(rel, "missing")
        if behaviour in ("404", "missing"):
            self.send_error(404)
        elif behaviour == "500":
            self.send_error(500)
        elif behaviour == "redirect":
            self.send_response(302)
            self.send_header("Location", f"/direct/{rel}")
            self.end_headers()
        else:
            if behaviour == "slow":
                time.sleep(self.slow_seconds)
            self._send_file(rel)

    def _send_file(self, rel: str) -> None:
        path = (self.root / rel).resolve()
        if not path.is_file() or self.root not in path.parents:
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that timed out hung up
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def make_server(crawl_dir: str | Path, port: int | None = None) -> ThreadingHTTPServer:
    """A server for the crawl on 127.0.0.1 (port from synth.json's base_url unless given)."""
    root = Path(crawl_dir).resolve()
    params = json.loads((root / "synth.json").read_text())
    port = urlparse(params["base_url"]).port if port is None else port
    truth = pq.read_table(root / "truth.parquet", columns=["path", "role", "http"]).to_pylist()
    behaviours = {row["path"]: row["http"] for row in truth if row["role"] == "pool"}
    handler = partial(CrawlHandler, root=root, behaviours=behaviours, slow_seconds=params["slow_seconds"])
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


def serve_in_background(crawl_dir: str | Path, port: int | None = None) -> ThreadingHTTPServer:
    """Start `make_server` on a daemon thread; call `.shutdown()` to stop it."""
    server = make_server(crawl_dir, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
