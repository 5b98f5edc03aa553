"""HTTP server of the labelling app (stdlib ``ThreadingHTTPServer``): the page, a JSON API and the clips.

    GET  /                        the page (``?token=T`` sets a cookie, so the page and its videos work)
    GET  /api/next?labeller=NAME[&exclude=ID,...][&reserve=1]   claim a query: 200 {query_id, first, run, ...}, 204 none
    POST /api/answer  {query_id, label: 1|-1|0|null, labeller, seconds, run}
    POST /api/undo    {labeller}      POST /api/release {query_id, labeller, run}
    POST /api/heartbeat {labeller, query_ids, run}   renew the holds of the pairs a page shows
    GET  /api/stats[?labeller=NAME]   GET|PUT /api/task {instructions}   GET /api/progress (the run's curve)
    GET  /clips/<file>                clips from the run's clips/ folder, with HTTP Range support

``run`` (optional in a body) is the run id a pair came with: a body naming another run (a page still
showing the pairs of the run that was served on this port before) stores, holds and releases nothing.

Errors are JSON ``{"error": "one line"}`` with a 4xx status (5xx for server faults) and leave the
store unchanged. Who may connect (loopback by default, a token otherwise) is :mod:`rlhf_control.web.access`;
POST/PUT must be ``application/json`` (a cross-site form cannot send that without a CORS preflight).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

from rlhf_control.errors import UserError
from rlhf_control.rundir import STORE_FILE
from rlhf_control.store.errors import StoreError
from rlhf_control.store.store import PreferenceStore
from rlhf_control.web.access import authorize, check_bind
from rlhf_control.web.app import CLIP_TYPES, ApiError, LabelApp, parse_exclude, parse_flag

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_STATIC = {"/": "index.html", "/index.html": "index.html", "/static/app.js": "app.js",
           "/static/style.css": "style.css"}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; media-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
MAX_BODY = 64 * 1024
_CHUNK = 256 * 1024


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range -> inclusive (start, end); None means serve the whole file (unknown unit,
    several ranges or bad syntax, which RFC 9110 lets a server ignore); ApiError 416 if unsatisfiable."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()) or not (first or last):
        return None
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise ApiError(416, f"range {header!r} is not satisfiable for a file of {size} bytes")
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise ApiError(416, f"range {header!r} is not satisfiable for a file of {size} bytes")
    return start, min(end, size - 1)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, addr: tuple[str, int], app: LabelApp, token: str | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.app = app
        self.token = token
        self.static = {name: (STATIC_DIR / name).read_bytes() for name in set(_STATIC.values())}
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a browser dropping a video request mid-way is normal
        log.exception("labelling server: error while handling a request from %s", client_address)

    def close_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the page makes many small requests
    server_version = "rlhf-control-label"
    timeout = 60  # drop idle keep-alive connections
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK stall each
        # keep-alive response by ~40 ms.
        if self.server.address_family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # ---- plumbing ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        h = {"Cache-Control": "no-store", **(headers or {})}
        self._send(status, json.dumps(obj).encode(), "application/json", h)

    def _read_body(self) -> bytes:
        """Read the request body (so a keep-alive connection stays in step), at most MAX_BODY bytes."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length, not chunked")
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "Content-Length is not a number") from None
        if n < 0:
            self.close_connection = True
            raise ApiError(400, f"Content-Length {n} is not allowed; give the body's size in bytes (>= 0)")
        if n > MAX_BODY:
            self.close_connection = True
            if 0 < n <= 16 * MAX_BODY:  # read it anyway, so the client sees the 413 and not a reset
                self.rfile.read(n)
            raise ApiError(413, f"request body of {n} bytes is too large; the limit is {MAX_BODY}")
        return self.rfile.read(n) if n else b""

    def _parse_json(self, raw: bytes) -> Any:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, f"Content-Type {ctype or 'none'!r} is not allowed; send application/json")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"malformed JSON body: {str(exc).splitlines()[0]}") from None

    def _dispatch(self, method: str) -> None:
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            raw = self._read_body() if method in ("POST", "PUT") else None
            extra = authorize(self.headers, query, self.server.token, self.server.server_address[1])
            body = None if raw is None else self._parse_json(raw)
            self._route(method, url.path, query, body, extra)
        except ApiError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
            self._json(exc.status, {"error": exc.message}, headers)
        except StoreError as exc:
            self._json(503, {"error": str(exc).splitlines()[0]})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # keep serving; report it in one line
            log.exception("labelling server: %s %s failed", method, self.path)
            self.close_connection = True
            self._json(500, {"error": f"internal error: {type(exc).__name__}: {str(exc)[:200]}"})

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any, extra: dict[str, str]) -> None:
        app = self.server.app
        api_routes = {
            ("GET", "/api/next"): lambda: app.next_query((query.get("labeller") or [None])[0],
                                                         parse_exclude((query.get("exclude") or [""])[0]),
                                                         parse_flag((query.get("reserve") or [None])[0], "reserve")),
            ("GET", "/api/stats"): lambda: app.stats((query.get("labeller") or [None])[0]),
            ("POST", "/api/heartbeat"): lambda: app.heartbeat(body),
            ("GET", "/api/task"): app.task,
            ("GET", "/api/progress"): app.progress,
            ("PUT", "/api/task"): lambda: app.set_task(body),
            ("POST", "/api/answer"): lambda: app.answer(body),
            ("POST", "/api/undo"): lambda: app.undo(body),
            ("POST", "/api/release"): lambda: app.release(body),
        }
        if (method, path) in api_routes:
            result = api_routes[(method, path)]()
            if result is None:
                self._send(204, b"", "application/json", {"Cache-Control": "no-store", **extra})
            else:
                self._json(200, result, extra)
            return
        if any(p == path for _, p in api_routes):
            allowed = ", ".join(sorted(m for m, p in api_routes if p == path))
            raise ApiError(405, f"{method} is not allowed on {path}; use {allowed}")
        if method not in ("GET", "HEAD"):
            raise ApiError(405 if path in _STATIC or path.startswith("/clips/") else 404,
                           f"{method} {path[:80]} is not supported")
        if path in _STATIC:
            name = _STATIC[path]
            headers = {"Cache-Control": "no-cache", **extra}
            if name.endswith(".html"):
                headers["Content-Security-Policy"] = _CSP
            self._send(200, self.server.static[name], _TYPES[Path(name).suffix], headers)
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon", extra)
        elif path.startswith("/clips/"):
            self._clip(app.clip_file(unquote(path[len("/clips/"):])), extra)
        else:
            raise ApiError(404, f"no such page {path[:80]!r}")

    def _clip(self, path: Path, extra: dict[str, str]) -> None:
        st = path.stat()
        size = st.st_size
        etag = f'"{size:x}-{st.st_mtime_ns:x}"'
        headers = {"Accept-Ranges": "bytes", "ETag": etag, "Cache-Control": "private, max-age=3600", **extra}
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        span = None
        if rng is not None and (if_range is None or if_range.strip() == etag):
            try:
                span = parse_range(rng, size)
            except ApiError as exc:
                self._json(416, {"error": exc.message}, {"Content-Range": f"bytes */{size}", **extra})
                return
        start, end = span if span is not None else (0, size - 1)
        length = max(0, end - start + 1)
        self.send_response(206 if span is not None else 200)
        self.send_header("Content-Type", CLIP_TYPES[path.suffix.lower()])
        self.send_header("Content-Length", str(length))
        if span is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:  # the file shrank under us: the length we promised is wrong now
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                left -= len(chunk)


class LabelServer:
    """A running labelling server. ``url`` is the page to open (with ``?token=`` when one is set),
    ``base_url`` the same without the token; ``stop()`` shuts it down (and closes a store it opened)."""

    def __init__(self, httpd: _Server, store: PreferenceStore, owns_store: bool, host: str) -> None:
        self.httpd = httpd
        self.app = httpd.app
        self.store = store
        self._owns_store = owns_store
        self.host = host
        self.port = int(httpd.server_address[1])
        self.token = httpd.token
        shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.base_url = f"http://{shown}:{self.port}/"
        self.url = self.base_url + (f"?token={self.token}" if self.token else "")
        self._thread: threading.Thread | None = None
        self._stopped = False

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.1)

    def start(self) -> LabelServer:
        self._thread = threading.Thread(target=self.serve_forever, name=f"label-server:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop serving (after ``grace_s`` seconds, so that open pages see the run's last state), drop
        open connections and close the store if the server opened it (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        if grace_s > 0 and self._thread is not None:
            time.sleep(grace_s)
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
        self.httpd.server_close()
        self.httpd.close_connections()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> LabelServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def make_server(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                instructions: str | None = None, *, store: PreferenceStore | None = None,
                clips_dir: str | os.PathLike | None = None, lease_s: float = 30.0) -> LabelServer:
    """Open the run's store and bind the port, without serving yet (errors come before anything runs).

    Raises ValueError for a host beyond loopback without a token or a port that cannot be bound,
    StoreError for a missing or damaged store (nothing is written to it).
    """
    check_bind(host, token)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} is not allowed; use 0 (any free port) to 65535")
    run_dir = Path(run_dir)
    owns = store is None
    if store is None:
        store = PreferenceStore.open(run_dir / STORE_FILE)
    try:
        app = LabelApp(store, run_dir, clips_dir=clips_dir, instructions=instructions, lease_s=lease_s)
        try:
            httpd = _Server((host, port), app, token)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another port "
                            "(train: --label-port, label: --port; 0 picks a free one)") from None
    except BaseException:
        if owns:
            store.close()
        raise
    return LabelServer(httpd, store, owns, host)


def start_server(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                 instructions: str | None = None, *, store: PreferenceStore | None = None,
                 clips_dir: str | os.PathLike | None = None, lease_s: float = 30.0) -> LabelServer:
    """Serve the labelling app from a background thread (e.g. while training); ``port=0`` picks a free
    port. Pass the trainer's ``store`` to share it (it is then not closed by ``stop()``)."""
    return make_server(run_dir, host, port, token, instructions, store=store, clips_dir=clips_dir,
                       lease_s=lease_s).start()


def serve(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          instructions: str | None = None, *, clips_dir: str | os.PathLike | None = None, lease_s: float = 30.0,
          out: TextIO | None = None) -> None:
    """Serve the labelling app until Ctrl-C (blocking). Prints the page URL on ``out`` (stdout)."""
    server = make_server(run_dir, host, port, token, instructions, clips_dir=clips_dir, lease_s=lease_s)
    out = sys.stdout if out is None else out
    print(f"labelling app: {server.url}  (Ctrl-C stops)", file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


__all__ = ["LabelServer", "make_server", "parse_range", "serve", "start_server"]
