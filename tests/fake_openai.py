"""A fake OpenAI-compatible chat server on the loopback address, for the tests of the openai backend
and of stage 1's fault tolerance. Each test's handler says how to answer (`ChatHandler.respond`);
the server records every request and counts attempts per conversation (its last message), so that
failures can depend on the attempt whatever the order requests arrive in."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[ChatHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.requests: list[tuple[str, dict, str | None]] = []  # path, body, Authorization
        self.in_flight = self.max_in_flight = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is for failures."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][-1]["content"]
        with self.server.lock:
            self.server.requests.append((self.path, body, self.headers.get("Authorization")))
            self.server.attempts[content] += 1
            attempt = self.server.attempts[content]
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client gave up on a hang
                self.respond(content, attempt, body)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def respond(self, content: str, attempt: int, body: dict) -> None:
        raise NotImplementedError

    def send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self.send_raw(status, json.dumps(payload).encode(), headers)

    def send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def serving(server: ChatServer) -> Iterator[ChatServer]:
    """`server` answering in a thread until the block ends."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
