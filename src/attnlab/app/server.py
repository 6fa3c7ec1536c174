"""A small HTTP server for the live explorer, on the standard library only, bounded in every direction.

Why not ``http.server.ThreadingHTTPServer``: it starts one thread per connection, so 200 idle sockets are 200
threads, and nothing times them out. Why not a framework (Flask, aiohttp, FastAPI): the app needs four JSON
routes and three static files; a framework would be the largest dependency attnlab has, for no feature used.

How it is bounded:
- one selector thread accepts connections and watches them; a connection costs a thread only once its request
  has started to arrive, and then one of ``workers`` pool threads (fixed) reads and answers it;
- a connection idle for ``idle_timeout`` seconds is closed; at most ``max_connections`` are open (more are
  closed at once); a request must arrive whole within ``request_timeout`` seconds;
- request bodies are capped at ``max_body`` bytes (413 past it); one request per connection (HTTP/1.0 style);
- it binds 127.0.0.1 unless ``allow_remote=True`` is passed explicitly.

Routes are a dict ``{(method, path): handler}``; a handler takes the parsed JSON body (or the query for GET)
and returns a ``Reply``. Nothing outside the routes is served: a path is a dictionary key, never a file name.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"


@dataclass
class Reply:
    """What a route answers: a status, a body and its content type, and extra headers."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200
    headers: dict = field(default_factory=dict)

    @classmethod
    def json(cls, obj, status: int = 200) -> "Reply":
        return cls(json.dumps(obj, allow_nan=False, separators=(",", ":")).encode(), status=status)

    @classmethod
    def error(cls, message: str, status: int = 400) -> "Reply":
        return cls.json({"error": message}, status)


class RequestError(ValueError):
    """A request the app refuses, with the HTTP status to answer (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_bind(host: str, allow_remote: bool) -> str:
    """The address to bind: loopback unless the caller explicitly allows a remote bind."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise ValueError(f"host must be a loopback address such as 127.0.0.1 (the app serves this machine only), "
                         f"got {host!r}; pass allow_remote=True (--allow-remote) to bind it anyway")
    return host


class BoundedServer:
    """Serve ``routes`` on (host, port) until ``shutdown()``; see the module docstring for the limits."""

    def __init__(self, routes: dict, host: str = LOOPBACK, port: int = 0, *, security_headers: dict | None = None,
                 workers: int = 4, max_connections: int = 512, idle_timeout: float = 10.0,
                 request_timeout: float = 10.0, max_body: int = 1 << 20, allow_remote: bool = False):
        if not (isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535):
            raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
        self.routes = dict(routes)
        self.security_headers = dict(security_headers or {})
        self.max_connections, self.idle_timeout = int(max_connections), float(idle_timeout)
        self.request_timeout, self.max_body = float(request_timeout), int(max_body)
        self.listener = socket.create_server((check_bind(host, allow_remote), port), backlog=128)
        self.listener.setblocking(False)
        self.server_address = self.listener.getsockname()
        self.pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="attnlab-app")
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.idle: dict[socket.socket, float] = {}              # open connections waiting for a request
        self.busy = 0                                            # connections handed to the pool
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> "BoundedServer":
        """Serve in a background thread; returns self."""
        self.thread = threading.Thread(target=self.serve_forever, name="attnlab-app-accept", daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            for key, _ in self.selector.select(timeout=0.25):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._dispatch(key.fileobj)
            self._close_idle()

    def shutdown(self) -> None:
        self.stopping.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(5)
        for conn in list(self.idle):
            self._forget(conn)
            conn.close()
        self.selector.close()
        self.listener.close()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def server_close(self) -> None:
        """``http.server``'s name for releasing the listening socket (``shutdown`` already does it), so code
        written for the standard library's servers stops this one the same way."""
        self.listener.close()

    def open_connections(self) -> int:
        with self.lock:
            return len(self.idle) + self.busy

    # --- the selector thread ------------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if self.open_connections() >= self.max_connections:
                conn.close()                                      # over the limit: refuse rather than queue
                continue
            conn.setblocking(False)
            self.idle[conn] = time.monotonic()
            self.selector.register(conn, selectors.EVENT_READ, None)

    def _dispatch(self, conn) -> None:
        self._forget(conn)
        with self.lock:
            self.busy += 1
        self.pool.submit(self._handle, conn)

    def _forget(self, conn) -> None:
        self.idle.pop(conn, None)
        try:
            self.selector.unregister(conn)
        except (KeyError, ValueError):
            pass

    def _close_idle(self) -> None:
        now = time.monotonic()
        for conn, since in list(self.idle.items()):
            if now - since > self.idle_timeout:
                self._forget(conn)
                conn.close()

    # --- a pool thread: one request, one answer -----------------------------------------------------------
    def _handle(self, conn) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(self.request_timeout)
            _Handler(conn, conn.getpeername(), self)
        except Exception:                                         # a broken client must not kill the worker
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass
            with self.lock:
                self.busy -= 1

    def answer(self, method: str, raw_path: str, body: bytes | None) -> Reply:
        path = urlsplit(raw_path).path
        route = self.routes.get((method, path))
        if route is None:
            known = any(p == path for _, p in self.routes)
            return Reply.error(f"{method} {path} is not served", 405 if known else 404)
        try:
            if method == "GET":
                query = {k: v[-1] for k, v in parse_qs(urlsplit(raw_path).query).items()}
                return route(query)
            try:
                payload = json.loads(body or b"{}")
            except (ValueError, UnicodeDecodeError) as err:
                raise RequestError(f"the request body must be JSON: {err}") from err
            if not isinstance(payload, dict):
                raise RequestError(f"the request body must be a JSON object, got {type(payload).__name__}")
            return route(payload)
        except RequestError as err:
            return Reply.error(str(err), err.status)
        except (ValueError, TypeError, KeyError) as err:          # the library's clear errors, one line
            return Reply.error(f"{type(err).__name__}: {err}", 400)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Parses one request off the socket (the standard library's parser) and writes the route's reply."""

    protocol_version = "HTTP/1.0"
    server_version = "attnlab"
    sys_version = ""

    def __init__(self, conn, address, server: BoundedServer):
        self.app = server
        super().__init__(conn, address, None)

    def do_GET(self):
        self._reply(self.app.answer("GET", self.path, None))

    def do_POST(self):
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = -1
        if n < 0:
            return self._reply(Reply.error("Content-Length must be a non-negative integer", 400))
        if n > self.app.max_body:
            return self._reply(Reply.error(f"the request body is {n} bytes; the limit is {self.app.max_body}", 413))
        self._reply(self.app.answer("POST", self.path, self.rfile.read(n)))

    def _reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        for name, value in {**self.app.security_headers, **reply.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, *args):                                 # quiet: the CLI prints the address once
        pass
