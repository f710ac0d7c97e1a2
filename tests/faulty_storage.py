"""Flaky storage for tests: an HTTP proxy in front of Azurite that injects faults.

Point a connection string's BlobEndpoint at the proxy (`FaultyStorage.env`) and every
request of every task passes through it. On a seeded random fraction of requests it does
what a real object store does now and then:

* `delay`: holds the request for up to 2 s, then forwards it;
* `500`: answers 500 InternalError without forwarding;
* `503`: answers 503 ServerBusy with `Retry-After: 1` (throttling) without forwarding;
* `reset_request`: reads part of the request body, then resets the connection: the
  request never reaches Azurite;
* `reset_response`: forwards the request, then sends part of Azurite's response and
  resets the connection: the write happened, the client does not know it.

Which request gets which fault is decided by the seed and the request's arrival number
alone, so the same order of requests meets the same faults (the order itself varies with
the tasks' timing). On top of that, `scripted` faults hit the first requests of a method
to a path, whatever the seed: the moments known to matter. Paths listed in `refuse` are
answered 403 AuthenticationFailed, every time (a credential without access). Every fault
is written to the log with its request number, method and path, so a failure can be
traced to what was injected. Standard library only.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

FAULTS = ("delay", "500", "503", "reset_request", "reset_response")
MAX_DELAY_SECONDS = 2.0
# Headers that belong to one connection and are not forwarded.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te"}


@dataclass
class Injected:
    """One request the proxy tampered with."""

    number: int
    method: str
    path: str
    fault: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f" | {self.detail}" if self.detail else ""
        return f"faulty-storage | #{self.number} | {self.fault} | {self.method} {self.path}{detail}"


@dataclass
class Scripted:
    """`fault` for the first `times` requests of `method` whose path holds `path_part`."""

    method: str
    path_part: str
    fault: str
    times: int
    hit: int = 0


@dataclass
class FaultyStorage:
    """A fault-injecting proxy to Azurite on 127.0.0.1 (`start()`, then `stop()`)."""

    upstream_port: int
    fault_rate: float
    seed: int
    log_path: Path
    refuse: tuple[str, ...] = ()  # path substrings answered 403
    scripted: tuple[Scripted, ...] = ()
    upstream_host: str = "127.0.0.1"
    injected: list[Injected] = field(default_factory=list)
    requests: int = 0
    _scripted_requests: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def connection_string(self, account: str, key: str) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{account};"
        )

    def env(self, account: str, key: str) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string(account, key)}

    def summary(self) -> str:
        counts = {fault: 0 for fault in FAULTS}
        for record in self.injected:
            counts[record.fault] = counts.get(record.fault, 0) + 1
        shown = ", ".join(f"{fault}: {n}" for fault, n in counts.items())
        return f"faulty-storage | {self.requests} requests | injected {shown} | log {self.log_path}"

    def next_request(self, method: str, path: str) -> tuple[int, str | None, random.Random]:
        """This request's number, its fault (None: none) and a generator for its details."""
        with self._lock:
            self.requests += 1
            number = self.requests
            script = next((s for s in self.scripted if _matches(s, method, path)), None)
            if script is not None:
                script.hit += 1
                self._scripted_requests.add(number)
        rng = random.Random(f"{self.seed}:{number}")
        if any(part in path for part in self.refuse):
            return number, "403", rng
        if script is not None:
            return number, script.fault, rng
        return number, (rng.choice(FAULTS) if rng.random() < self.fault_rate else None), rng

    def record(self, injected: Injected) -> None:
        with self._lock:
            if injected.number in self._scripted_requests:
                injected.detail = ", ".join(filter(None, ["scripted", injected.detail]))
            self.injected.append(injected)
            with open(self.log_path, "a") as log:
                log.write(f"{time.strftime('%H:%M:%S')} {injected}\n")


class _ProxyHandler(BaseHTTPRequestHandler):
    proxy: FaultyStorage
    protocol_version = "HTTP/1.1"  # keep-alive, as the Azure SDK's connection pool expects

    def do_request(self) -> None:
        path = _shown_path(self.path)
        number, fault, rng = self.proxy.next_request(self.command, path)
        if fault is None:
            self._send(*self._forward(self._read_body()))
        elif fault == "delay":
            seconds = rng.uniform(0.1, MAX_DELAY_SECONDS)
            self.proxy.record(Injected(number, self.command, path, fault, f"{seconds:.1f} s"))
            time.sleep(seconds)
            self._send(*self._forward(self._read_body()))
        elif fault in ("403", "500", "503"):
            self._read_body()
            self.proxy.record(Injected(number, self.command, path, fault))
            self._send_error(int(fault))
        elif fault == "reset_request":
            expected = int(self.headers.get("Content-Length") or 0)
            received = len(self.rfile.read(expected // 2)) if expected else 0
            detail = f"after {received} of {expected} request body bytes"
            self.proxy.record(Injected(number, self.command, path, fault, detail))
            self._reset()
        else:  # reset_response: Azurite did the work; the client never hears all of it
            status, headers, body = self._forward(self._read_body())
            response = self._response(status, headers, body)
            sent = len(response) // 2  # in the body, or in the headers of an empty one
            detail = f"Azurite answered {status}; sent {sent} of {len(response)} bytes"
            self.proxy.record(Injected(number, self.command, path, fault, detail))
            self.wfile.write(response[:sent])
            self._reset()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_OPTIONS = do_PATCH = do_request

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return body
            body += self.rfile.read(size)
            self.rfile.readline()

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(
            self.proxy.upstream_host, self.proxy.upstream_port, timeout=60
        )
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST", "PATCH"):
                headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            return response.status, kept, data
        finally:
            upstream.close()

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.wfile.write(self._response(status, headers, body))

    def _response(self, status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
        """The whole response as bytes; Azurite's chunked answers get a Content-Length."""
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        lines += [f"{key}: {value}" for key, value in headers]
        if not any(key.lower() == "content-length" for key, _ in headers):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if self.command == "HEAD" else head + body

    def _send_error(self, status: int) -> None:
        code, message = {
            403: ("AuthenticationFailed", "Server failed to authenticate the request."),
            500: ("InternalError", "The server encountered an internal error."),
            503: ("ServerBusy", "The server is busy (injected by faulty-storage)."),
        }[status]
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>"
        ).encode()
        headers = [("Content-Type", "application/xml"), ("x-ms-error-code", code)]
        if status == 503:
            headers.append(("Retry-After", "1"))
        self._send(status, headers, body)

    def _reset(self) -> None:
        """Close with a TCP reset, as a dropped connection looks to the client."""
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # requests are counted; only faults are logged


def _matches(script: Scripted, method: str, path: str) -> bool:
    return script.hit < script.times and method == script.method and script.path_part in path


def _shown_path(raw: str) -> str:
    """The request's path with only the query keys that say what it is (never a SAS)."""
    parts = urlsplit(raw)
    query = parse_qs(parts.query)
    shown = [f"{key}={query[key][0]}" for key in ("restype", "comp") if key in query]
    return parts.path + (f"?{'&'.join(shown)}" if shown else "")
