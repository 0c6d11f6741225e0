"""Real servers on loopback for the tests: a W&B-compatible one (`openwandb`) and an S3-compatible one
(`moto_server`). Each starts on a free port, is waited for until it answers, can be killed and
started again on the same port (and, for W&B, the same data), and reads back what it received.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
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
