"""A webhook receiver on 127.0.0.1 for the tests: answers from a script, records every delivery.

``WebhookReceiver(answers=[500, 500, 200])`` answers the first POST 500, the second 500, then 200
for every later one (the last answer repeats). An answer may be an int status, a (status,
headers) pair, or ``HANG`` (hold the request until the receiver stops: a timeout for the caller).
Each delivery is kept with its headers and exact body; ``wait_for`` waits on a condition over them
with a deadline (no sleeps).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG = "hang"
Answer = int | tuple[int, dict[str, str]] | str


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None
    """What the receiver answered (None: it hung)."""

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 resets connections under load.
    request_queue_size = 128


class WebhookReceiver:
    def __init__(self, answers: list[Answer] | None = None) -> None:
        self._answers: list[Answer] = list(answers or [200])
        self._answers_by_path: dict[str, list[Answer]] = {}
        self.received: list[Received] = []
        self._changed = threading.Condition()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                answer = receiver._next_answer(self.path)
                headers = {name.lower(): value for name, value in self.headers.items()}
                if answer == HANG:
                    receiver._record(Received(self.path, headers, body, None))
                    receiver._released.wait(30)
                    return
                status, extra = answer if isinstance(answer, tuple) else (int(answer), {})
                receiver._record(Received(self.path, headers, body, status))
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer_path(self, path: str, answers: list[Answer]) -> None:
        """Answers for POSTs to ``path`` alone (the last repeats)."""
        with self._changed:
            self._answers_by_path[path] = list(answers)

    def _next_answer(self, path: str) -> Answer:
        with self._changed:
            answers = self._answers_by_path.get(path.split("?", 1)[0], self._answers)
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def _record(self, received: Received) -> None:
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()

    def wait_for(
        self, condition: Callable[[list[Received]], bool], timeout_s: float, what: str
    ) -> list[Received]:
        with self._changed:
            if not self._changed.wait_for(lambda: condition(list(self.received)), timeout_s):
                raise AssertionError(
                    f"timed out after {timeout_s} s waiting for {what}; "
                    f"{len(self.received)} deliveries received"
                )
            return list(self.received)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
