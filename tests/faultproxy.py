"""A fault-injecting HTTP/1.1 reverse proxy for the S3 tests (standard library only).

It sits on a free loopback port between boto3 (dsv) and an S3 server (moto, SeaweedFS)
and, for each request, with probability `p` injects one fault instead of forwarding it:

* ``drop``   — read the request, then close the connection without answering;
* ``reset``  — read the request, then close with SO_LINGER 0 (the client sees an RST);
* ``500``    — answer HTTP 500 with an S3 ``InternalError`` XML body;
* ``503``    — answer HTTP 503 with an S3 ``SlowDown`` XML body;
* ``slow``   — sleep 0.5–2 s, then forward normally (never chosen when p = 1.0, so a
  proxy at 100 % fails every single request).

One more kind is only used when asked for (`kinds=` or `rule`): ``lost`` forwards the
request — the server acts on it — and then closes the connection without relaying the
answer, as when a response is lost on the way back.

Everything else is forwarded verbatim — method, target, headers (Host included, so
signatures still match) and body, framed by Content-Length or chunked transfer encoding —
and the response is streamed back. Each client connection carries one request: the proxy
asks the upstream for ``Connection: close`` and tells the client the same (neither header
is signed by SigV4), so no connection is ever reused across an injected fault.

Faults are chosen by a seeded RNG, so a run is reproducible up to thread scheduling.
`rule(method, target)` may force a fault (or "forward") for chosen requests, e.g. every
request touching `refs/`. Counters: `requests`, `forwarded`, `faults` (kind → count), `body_bytes`
(response bodies relayed), and `log` (method, target, what happened) for messages in
failing assertions.
"""

from __future__ import annotations

import collections
import random
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable

FAILING = ("drop", "reset", "500", "503")
ALL_FAULTS = FAILING + ("slow",)

_XML = {
    "500": ("500 Internal Server Error", "InternalError",
            "We encountered an internal error. Please try again."),
    "503": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
}

_MAX_HEAD = 64 << 10
_PIECE = 256 << 10


class _ClientGone(Exception):
    """The client closed its side before a whole request arrived."""


def _recv_until(sock: socket.socket, buf: bytearray, marker: bytes, limit: int) -> int:
    """Read into `buf` until `marker` appears; return the index just past it."""
    while True:
        at = buf.find(marker)
        if at >= 0:
            return at + len(marker)
        if len(buf) > limit:
            raise _ClientGone("header too long")
        chunk = sock.recv(_PIECE)
        if not chunk:
            raise _ClientGone("eof")
        buf += chunk


def _recv_exact(sock: socket.socket, buf: bytearray, n: int) -> None:
    """Make `buf` at least `n` bytes long."""
    while len(buf) < n:
        chunk = sock.recv(max(_PIECE, n - len(buf)))
        if not chunk:
            raise _ClientGone("eof")
        buf += chunk


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _read_body(sock: socket.socket, buf: bytearray, start: int,
               headers: list[tuple[str, str]]) -> bytes:
    """The message body after the head (raw: chunked stays chunked), from `buf` + socket."""
    te = (_header(headers, "transfer-encoding") or "").lower()
    if "chunked" in te:
        pos = start
        while True:
            end = _recv_until_from(sock, buf, b"\r\n", pos)
            size = int(buf[pos:end - 2].split(b";")[0].strip() or b"0", 16)
            if size == 0:
                # trailers, then an empty line
                while True:
                    line_end = _recv_until_from(sock, buf, b"\r\n", end)
                    if line_end - end == 2:
                        return bytes(buf[start:line_end])
                    end = line_end
            _recv_exact(sock, buf, end + size + 2)
            pos = end + size + 2
    length = int(_header(headers, "content-length") or 0)
    _recv_exact(sock, buf, start + length)
    return bytes(buf[start:start + length])


def _recv_until_from(sock: socket.socket, buf: bytearray, marker: bytes, pos: int) -> int:
    while True:
        at = buf.find(marker, pos)
        if at >= 0:
            return at + len(marker)
        chunk = sock.recv(_PIECE)
        if not chunk:
            raise _ClientGone("eof")
        buf += chunk


class FaultProxy:
    """`with FaultProxy(upstream_url, p=0.1, seed=1) as proxy:` → `proxy.url`."""

    def __init__(self, upstream: str, p: float = 0.0, seed: int = 0,
                 kinds: tuple[str, ...] | None = None,
                 rule: Callable[[str, str], str | None] | None = None) -> None:
        host_port = upstream.split("://", 1)[-1].rstrip("/")
        host, _, port = host_port.partition(":")
        self.upstream = (host, int(port or 80))
        self.p = p
        self.kinds = kinds
        self.rule = rule
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.forwarded = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str, str]] = []
        self.body_bytes = 0  # bytes of response bodies relayed to clients
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:  # noqa: D401 - socketserver API
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_rate(self, p: float) -> None:
        with self._lock:
            self.p = p

    def summary(self) -> str:
        return (f"{self.requests} requests, {self.forwarded} forwarded, faults "
                f"{dict(self.faults)}")

    # ---- one connection ---------------------------------------------------------------

    def _choose(self, method: str, target: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self.rule is not None:
                forced = self.rule(method, target)
                if forced is not None:
                    return None if forced == "forward" else forced
            if self.p <= 0 or self._rng.random() >= self.p:
                return None
            kinds = self.kinds or (FAILING if self.p >= 1.0 else ALL_FAULTS)
            return self._rng.choice(kinds)

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(60)
        buf = bytearray()
        try:
            end = _recv_until(client, buf, b"\r\n\r\n", _MAX_HEAD)
            request_line, headers = _parse_head(bytes(buf[:end]))
            method, target, _version = (request_line.split(" ", 2) + ["", ""])[:3]
            if (_header(headers, "expect") or "").lower() == "100-continue":
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = _read_body(client, buf, end, headers)
        except (_ClientGone, OSError, ValueError):
            client.close()
            return
        fault = self._choose(method, target)
        with self._lock:
            if fault is not None:
                self.faults[fault] += 1
            self.log.append((method, target, fault or "forward"))
        try:
            if fault == "drop":
                client.shutdown(socket.SHUT_RDWR)
                client.close()
                return
            if fault == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                return
            if fault in _XML:
                self._error(client, fault, target)
                return
            if fault == "slow":
                with self._lock:
                    delay = self._rng.uniform(0.5, 2.0)
                time.sleep(delay)
            self._forward(client, request_line, headers, body, method,
                          lose_response=fault == "lost")
        except OSError:
            pass
        finally:
            try:
                client.close()
            except OSError:
                pass

    def _error(self, client: socket.socket, fault: str, target: str) -> None:
        status, code, message = _XML[fault]
        resource = target.split("?", 1)[0]
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message><Resource>{resource}</Resource>"
                f"<RequestId>faultproxy</RequestId></Error>").encode()
        head = (f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        client.sendall(head + body)

    def _forward(self, client: socket.socket, request_line: str,
                 headers: list[tuple[str, str]], body: bytes, method: str,
                 lose_response: bool = False) -> None:
        drop = {"connection", "expect", "keep-alive", "proxy-connection"}
        lines = [request_line] + [f"{k}: {v}" for k, v in headers if k.lower() not in drop]
        lines.append("Connection: close")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        with socket.create_connection(self.upstream, timeout=60) as up:
            up.sendall(raw)
            with self._lock:  # counted before the client can see an answer
                self.forwarded += 1
            buf = bytearray()
            try:
                end = _recv_until(up, buf, b"\r\n\r\n", _MAX_HEAD)
                # Skip interim 1xx responses (the body was already sent whole).
                while buf[9:10] == b"1" and buf[:5] == b"HTTP/":
                    del buf[:end]
                    end = _recv_until(up, buf, b"\r\n\r\n", _MAX_HEAD)
            except _ClientGone:
                return  # upstream closed without answering: so do we
            if lose_response:
                client.shutdown(socket.SHUT_RDWR)
                return
            status_line, resp_headers = _parse_head(bytes(buf[:end]))
            out = [status_line] + [f"{k}: {v}" for k, v in resp_headers
                                   if k.lower() not in ("connection", "keep-alive")]
            out.append("Connection: close")
            client.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            status = int(status_line.split(" ", 2)[1])
            rest = bytes(buf[end:])
            if method == "HEAD" or status in (204, 304):
                return
            length = _header(resp_headers, "content-length")
            te = (_header(resp_headers, "transfer-encoding") or "").lower()
            if length is not None and "chunked" not in te:
                remaining = int(length) - len(rest)
                self._relay(client, rest)
                while remaining > 0:
                    chunk = up.recv(min(_PIECE, remaining))
                    if not chunk:
                        break
                    self._relay(client, chunk)
                    remaining -= len(chunk)
            else:  # chunked or close-delimited: relay until the upstream closes
                self._relay(client, rest)
                while True:
                    chunk = up.recv(_PIECE)
                    if not chunk:
                        break
                    self._relay(client, chunk)

    def _relay(self, client: socket.socket, data: bytes) -> None:
        client.sendall(data)
        with self._lock:
            self.body_bytes += len(data)
