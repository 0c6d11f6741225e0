"""Real servers on loopback for the tests: a W&B-compatible one (`openwandb`) and an S3-compatible one
(`moto_server`). Each starts on a free port, is waited for until it answers, can be killed and
started again on the same port (and, for W&B, the same data), and reads back what it received.
In front of a W&B server, `RateLimitingProxy` answers HTTP 429 above a set rate, as W&B does; in
front of an S3 server, `SlowDownProxy` answers 503 SlowDown above a set rate, as a bucket under load does.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
# openwandb's built-in admin key; its entity is `default`.
OPENWANDB_KEY = "local" + "0" * 35
ENTITY = "default"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_answers(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before answering")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


class _Server:
    port: int
    proc: subprocess.Popen[bytes] | None = None
    _hang: tuple[threading.Event, threading.Thread] | None = None
    _failing: Any = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.release_port()
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_until_answers(self.url, self.proc)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a lost node would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def hang(self) -> None:
        """Take the server's port with a listener that accepts connections and never answers."""
        self.kill()
        stop = threading.Event()

        def accept() -> None:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", self.port))
                sock.listen(1024)
                sock.settimeout(0.1)
                held = []  # open, never read or answered
                ready.set()
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        held.append(sock.accept()[0])
                for conn in held:
                    conn.close()

        ready = threading.Event()
        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        ready.wait(10)
        self._hang = (stop, thread)

    def fail(self) -> None:
        """Take the server's port with an HTTP server that answers every request with a 500 error."""
        self.kill()
        import http.server

        class Failing(http.server.BaseHTTPRequestHandler):
            def _fail(self) -> None:
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = _fail

            def log_message(self, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Failing)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self._failing = server

    def release_port(self) -> None:
        if self._failing is not None:
            self._failing.shutdown()
            self._failing.server_close()
            self._failing = None
        if self._hang is not None:
            stop, thread = self._hang
            stop.set()
            thread.join()
            self._hang = None

    def stop(self) -> None:
        self.kill()
        self.release_port()
        self.log.close()


class WandbServer(_Server):
    """`openwandb serve` on 127.0.0.1, its data under `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - closed in stop()

    def command(self) -> list[str]:
        where = ("--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir))
        return [str(BIN / "openwandb"), "serve", *where]

    def env(self) -> dict[str, str]:
        """What a pod (or `sync`) needs to reach this server online."""
        return {"WANDB_BASE_URL": self.url, "WANDB_API_KEY": OPENWANDB_KEY, "WANDB_MODE": "online"}

    def runs(self) -> dict[str, str]:
        """Run id -> state, as the server recorded them."""
        db = self.data_dir / "openwandb.db"
        if not db.exists():
            return {}
        with sqlite3.connect(db) as conn:
            return dict(conn.execute("select run_id, state from runs").fetchall())

    def rows(self, project: str, run_id: str) -> list[dict[str, Any]]:
        """Every history row the server received for a run, in the order received."""
        path = self.data_dir / "files" / ENTITY / project / run_id / "wandb-history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class S3Server(_Server):
    """`moto_server` on 127.0.0.1 with one bucket; Flyte's storage reaches it through `env()`."""

    bucket = "flyte"

    def __init__(self, log_dir: Path) -> None:
        self.port = _free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(log_dir / "s3.log", "ab")  # noqa: SIM115 - closed in stop()

    def command(self) -> list[str]:
        return [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]

    def start(self) -> None:
        super().start()
        request = urllib.request.Request(f"{self.url}/{self.bucket}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()

    def env(self) -> dict[str, str]:
        return {
            "FLYTE_AWS_ENDPOINT": self.url,
            "FLYTE_AWS_ACCESS_KEY_ID": "test",
            "FLYTE_AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
        }

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def requests(self) -> list[S3Request]:
        """Every request the server has answered so far, in order, from its own access log."""
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace")
        out = []
        for found in _ACCESS.finditer(text):
            method, target, status = found.group(1), found.group(2), int(found.group(3))
            path, _, query = target.partition("?")
            out.append(S3Request(method, urllib.parse.unquote(path), urllib.parse.parse_qs(query), status))
        return out

    def list_keys(self, prefix: str) -> list[str]:
        """The keys stored under `prefix` (in the bucket), read straight from the server."""
        keys: list[str] = []
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, **({"continuation-token": token} if token else {})}
            url = f"{self.url}/{self.bucket}?{urllib.parse.urlencode(query)}"
            with urllib.request.urlopen(url, timeout=30) as answer:
                body = answer.read().decode()
            keys += re.findall(r"<Key>([^<]*)</Key>", body)
            more = re.search(r"<NextContinuationToken>([^<]*)</NextContinuationToken>", body)
            if not more:
                return keys
            token = more.group(1)


# `127.0.0.1 - - [date] "GET /bucket/key?query HTTP/1.1" 200 -`: werkzeug's access log, as moto_server writes it
_ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')


@dataclass
class S3Request:
    """One request an `S3Server` answered: its method, path (`/bucket/key`), query and status."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int

    @property
    def is_list(self) -> bool:
        """Whether it lists the bucket (ListObjects / ListObjectsV2)."""
        return self.method == "GET" and self.path.rstrip("/").count("/") == 1 and "list-type" in self.query


class Outage:
    """A TCP proxy in front of a server, to cut it off and bring it back without losing its data.

    (`moto_server` keeps its objects in memory: killing it would lose them, which no real object
    store does. Cutting the proxy is an outage of the store, not a loss.)
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = _free_port()
        self._stop: threading.Event | None = None
        self._threads: list[threading.Thread] = []
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        """Answer on the proxy's port again."""
        if self._stop is not None:
            return
        stop = self._stop = threading.Event()
        ready = threading.Event()

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    try:
                        data = src.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    dst.sendall(data)
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

        def serve() -> None:
            with socket.socket() as listener:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", self.port))
                listener.listen(256)
                listener.settimeout(0.1)
                ready.set()
                while not stop.is_set():
                    try:
                        client = listener.accept()[0]
                    except TimeoutError:
                        continue
                    upstream = socket.create_connection(("127.0.0.1", self.target_port))
                    for sock in (client, upstream):
                        sock.settimeout(0.2)
                    for a, b in ((client, upstream), (upstream, client)):
                        thread = threading.Thread(target=pipe, args=(a, b), daemon=True)
                        thread.start()
                        self._threads.append(thread)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self._threads.append(thread)
        ready.wait(10)

    def cut(self) -> None:
        """Refuse connections and drop the open ones."""
        if self._stop is None:
            return
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads = []
        self._stop = None


class RateLimitingProxy:
    """An HTTP proxy on 127.0.0.1 in front of a W&B server that refuses, as W&B does, what comes
    faster than a set rate: run creations (GraphQL `upsertBucket` for a run it has not created
    yet) and file-stream requests (`POST .../file_stream`), each counted over a sliding window of
    one second (below one a second: of 1 / rate seconds, holding one request). A refusal is HTTP
    429 with W&B's `RateLimit-Limit`, `RateLimit-Remaining: 0` and `RateLimit-Reset` headers, and
    `Retry-After`. Everything else is forwarded. `requests` records each request it classified,
    forwarded or refused, for the test to read back.
    """

    def __init__(
        self, target_url: str, creations_per_s: float | None = None, file_stream_per_s: float | None = None
    ) -> None:
        import http.server

        self.target_url = target_url.rstrip("/")
        self.limits = {"creation": creations_per_s, "file_stream": file_stream_per_s}
        self.requests: list[LimitedRequest] = []
        self.created: set[tuple[str, str]] = set()  # (project, run) the server created
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as W&B's client expects

            def _handle(self) -> None:
                with contextlib.suppress(ConnectionError):  # a client gone meanwhile (its service stopped)
                    proxy._forward(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

            def log_message(self, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.daemon_threads = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def of_kind(self, kind: str, refused: bool | None = None) -> list[LimitedRequest]:
        """The recorded requests of `kind` (`creation`, `update`, `file_stream`), all or only the
        refused (`True`) or forwarded (`False`) ones."""
        with self._lock:
            return [r for r in self.requests if r.kind == kind and (refused is None or r.refused == refused)]

    def creation_times(self) -> dict[str, float]:
        """Run -> when the server was first asked, successfully, to create it (`time.time()`)."""
        return {r.run: r.at for r in self.of_kind("creation", refused=False) if r.status == 200}

    def _classify(self, method: str, path: str, body: bytes) -> tuple[str | None, str | None, str | None]:
        """(kind, project, run) of a request, or `None`s where it is neither a run's upsert nor its file stream."""
        parts = path.split("?", 1)[0].strip("/").split("/")
        if method == "POST" and len(parts) == 5 and parts[0] == "files" and parts[4] == "file_stream":
            return "file_stream", parts[2], parts[3]
        if method == "POST" and parts == ["graphql"] and b"upsertBucket" in body:
            try:
                variables = json.loads(body).get("variables") or {}
            except ValueError:
                variables = {}
            project, run = variables.get("project") or "", variables.get("name") or ""
            kind = "update" if (project, run) in self.created else "creation"
            return kind, project, run
        return None, None, None

    def _admit(self, kind: str, now: float) -> tuple[bool, float, float]:
        """Whether a request of `kind` may pass now; the window's capacity and when it next frees."""
        rate = self.limits.get(kind)
        if rate is None:
            return True, 0.0, 0.0
        window = max(1.0, 1.0 / rate)
        capacity = max(1.0, rate * window)
        recent = sorted(r.at for r in self.requests if r.kind == kind and not r.refused and now - r.at < window)
        if len(recent) < capacity:
            return True, capacity, 0.0
        return False, capacity, recent[0] + window - now

    def _forward(self, handler: Any) -> None:
        import math

        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        kind, project, run = self._classify(handler.command, handler.path, body)
        record = None
        if kind is not None:
            with self._lock:
                now = time.time()
                admitted, capacity, reset_s = self._admit(kind, now)
                record = LimitedRequest(now, kind, project or "", run or "", refused=not admitted)
                self.requests.append(record)
            if not admitted:
                wait = str(max(1, math.ceil(reset_s)))
                handler.send_response(429)
                for name, value in (
                    ("RateLimit-Limit", str(int(capacity))),
                    ("RateLimit-Remaining", "0"),
                    ("RateLimit-Reset", wait),
                    ("Retry-After", wait),
                    ("Content-Type", "application/json"),
                ):
                    handler.send_header(name, value)
                payload = b'{"errors": [{"message": "rate limit exceeded"}]}'
                handler.send_header("Content-Length", str(len(payload)))
                handler.end_headers()
                handler.wfile.write(payload)
                return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        status = _relay(handler, self.target_url, body, headers)
        if record is not None and status is not None:
            record.status = status
            if kind == "creation" and status == 200:
                with self._lock:
                    self.created.add((project or "", run or ""))


def _relay(handler: Any, target_url: str, body: bytes, headers: dict[str, str]) -> int | None:
    """Send the request `handler` holds to `target_url` and its answer back; the answer's status
    (`None` where the server could not be reached: the client gets a 502)."""
    import http.client

    target = urllib.parse.urlsplit(target_url)
    conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
    try:
        conn.request(handler.command, handler.path, body=body or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
    except OSError:
        handler.send_response(502)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return None
    finally:
        conn.close()
    handler.send_response(response.status)
    for name, value in response.getheaders():
        if name.lower() not in ("transfer-encoding", "connection", "content-length"):
            handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(data)
    return response.status


@dataclass
class LimitedRequest:
    """One request the rate-limiting proxy classified."""

    at: float  # time.time() when it arrived
    kind: str  # "creation", "update" (a run's upsert once it exists) or "file_stream"
    project: str
    run: str
    refused: bool
    status: int | None = None  # the server's answer, where forwarded


class SlowDownProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 server that refuses, as a bucket under load does,
    what comes faster than a set rate: a token bucket of `burst` tokens, refilled at `rate` a second
    (`None`: no limit), one token a request. A request that finds no token is answered `503 SlowDown` with S3's XML
    error body (or, with `status=429`, `429 Too Many Requests` as GCS answers), and `Retry-After`
    where `retry_after_s` is given; the rest is forwarded to the server as it came. `requests`
    records each request (forwarded or refused) for the test to read back.
    """

    def __init__(
        self,
        target_url: str,
        rate: float | None,
        burst: float = 1.0,
        status: int = 503,
        retry_after_s: int | None = None,
    ) -> None:
        import http.server

        self.target_url = target_url.rstrip("/")
        self.rate = rate
        self.burst = burst
        self.status = status
        self.retry_after_s = retry_after_s
        self.requests: list[ProxiedRequest] = []
        self._tokens = burst
        self._filled_at = time.monotonic()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as object-store clients expect

            def _handle(self) -> None:
                with contextlib.suppress(ConnectionError):  # a client gone meanwhile (a call cancelled)
                    proxy._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.daemon_threads = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, s3: S3Server) -> dict[str, str]:
        """What a pod needs to reach `s3`'s bucket through this proxy."""
        return {**s3.env(), "FLYTE_AWS_ENDPOINT": self.url}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set_rate(self, rate: float | None) -> None:
        """Admit `rate` requests a second from now on (`None`: all), starting from an empty bucket
        (so `0` refuses every request)."""
        with self._lock:
            self.rate, self._tokens, self._filled_at = rate, 0.0, time.monotonic()

    def refused(self, method: str | None = None) -> list[ProxiedRequest]:
        """The requests it refused (of `method`, if given)."""
        with self._lock:
            return [r for r in self.requests if r.refused and (method is None or r.method == method)]

    def forwarded(self, method: str | None = None) -> list[ProxiedRequest]:
        """The requests it forwarded to the server (of `method`, if given)."""
        with self._lock:
            return [r for r in self.requests if not r.refused and (method is None or r.method == method)]

    def _take(self) -> bool:
        """Whether a token is left for a request arriving now (taking it)."""
        with self._lock:
            if self.rate is None:
                return True
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._filled_at) * self.rate)
            self._filled_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def _refuse(self, handler: Any) -> None:
        if self.status == 503:
            payload = (
                b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message>"
                b"<RequestId>0000000000000000</RequestId><HostId>proxy</HostId></Error>"
            )
            content_type = "application/xml"
        else:
            payload = b'{"error": {"code": 429, "message": "The rate of change requests to the bucket is too high."}}'
            content_type = "application/json"
        handler.send_response(self.status)
        handler.send_header("Content-Type", content_type)
        if self.retry_after_s is not None:
            handler.send_header("Retry-After", str(self.retry_after_s))
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(payload)

    def _serve(self, handler: Any) -> None:

        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        admitted = self._take()
        record = ProxiedRequest(time.time(), handler.command, handler.path.split("?", 1)[0], refused=not admitted)
        with self._lock:
            self.requests.append(record)
        if not admitted:
            self._refuse(handler)
            return
        # the Host header is kept: it is part of what the client signed
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
        record.status = _relay(handler, self.target_url, body, headers)


@dataclass
class ProxiedRequest:
    """One request the SlowDown proxy received."""

    at: float  # time.time() when it arrived
    method: str
    path: str  # /bucket/key
    refused: bool
    status: int | None = None  # the server's answer, where forwarded
