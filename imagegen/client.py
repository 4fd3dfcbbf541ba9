"""A small client of the imagegen API, the same against the local stack and a deployed stack."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from imagegen_common.models import JobStatus

DEFAULT_API_URL = "http://127.0.0.1:3000"
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})


class ApiError(RuntimeError):
    """The API answered with an error; ``body`` is what it wrote."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body}")
        self.method = method
        self.url = url
        self.status = status
        self.body = body


CONNECTION_LIMITS = httpx.Limits(keepalive_expiry=2.0)
"""An idle connection is reused for 2 s at most: less than the 5 s a server keeps one open
(uvicorn's default, the local API's). Reused later, a request can cross the server's close on the
wire and fail with "Server disconnected without sending a response"."""


class ImagegenClient:
    """``POST /generate``, ``GET``/``DELETE /generate/{id}`` and image downloads.

    ``api_url`` is the API's base URL: ``http://127.0.0.1:3000`` locally, the stack's ``ApiUrl``
    output (``https://<id>.execute-api.<region>.amazonaws.com/v1``) when deployed.
    """

    def __init__(
        self, api_url: str = DEFAULT_API_URL, api_key: str | None = None, timeout_s: float = 30.0
    ) -> None:
        self.api_url = api_url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "imagegen-cli"}
        if api_key:
            headers["x-api-key"] = api_key
        self._http = httpx.Client(headers=headers, timeout=timeout_s, limits=CONNECTION_LIMITS)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ImagegenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.api_url}{path}"
        response = self._http.request(method, url, **kwargs)
        if response.status_code >= 400:
            raise ApiError(method, url, response.status_code, response.text)
        return response

    def submit(self, request: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """``POST /generate``: the 202 body (``execution_id``, ``status_url``)."""
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        return dict(self._call("POST", "/generate", json=request, headers=headers).json())

    def status(self, execution_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/generate/{execution_id}").json())

    def job_status(self, execution_id: str) -> JobStatus:
        """``GET /generate/{id}`` as the API's model (stage, queue position, progress...)."""
        return JobStatus.model_validate(self.status(execution_id))

    def follow(
        self,
        execution_id: str,
        on_status: Callable[[JobStatus, float], None],
        *,
        poll_s: float = 0.5,
        timeout_s: float = 600.0,
    ) -> JobStatus:
        """Poll until the job ends, calling ``on_status(status, elapsed_s)`` after every poll
        (a progress bar moves with each); the last status is the ended job's."""
        started = time.monotonic()
        while True:
            status = self.job_status(execution_id)
            elapsed = time.monotonic() - started
            on_status(status, elapsed)
            if status.status in TERMINAL_STATUSES:
                return status
            if elapsed > timeout_s:
                raise TimeoutError(f"{execution_id} still {status.status} after {elapsed:.0f} s")
            time.sleep(poll_s)

    def cancel(self, execution_id: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/generate/{execution_id}").json())

    def wait(
        self,
        execution_id: str,
        *,
        on_change: Callable[[dict[str, Any], float], None] | None = None,
        poll_s: float = 0.5,
        timeout_s: float = 600.0,
    ) -> dict[str, Any]:
        """Poll until the job ends; ``on_change(status, elapsed_s)`` on each new status/stage."""
        started = time.monotonic()
        last: tuple[Any, Any] | None = None
        while True:
            status = self.status(execution_id)
            elapsed = time.monotonic() - started
            seen = (status.get("status"), status.get("stage"))
            if seen != last and on_change is not None:
                on_change(status, elapsed)
            last = seen
            if status.get("status") in TERMINAL_STATUSES:
                return status
            if elapsed > timeout_s:
                raise TimeoutError(
                    f"{execution_id} still {status.get('status')} after {elapsed:.0f} s"
                )
            time.sleep(poll_s)

    def download(
        self,
        url: str,
        path: Path,
        on_bytes: Callable[[int, int | None], None] | None = None,
    ) -> Path:
        """Fetch a pre-signed image URL into ``path`` (no API key: the URL is the credential);
        ``on_bytes(done, total)`` as it arrives (total from Content-Length, None without)."""
        with httpx.stream("GET", url, timeout=60.0) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError("GET", url.split("?", 1)[0], response.status_code, response.text)
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            chunks: list[bytes] = []
            done = 0
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                done += len(chunk)
                if on_bytes is not None:
                    on_bytes(done, total)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(chunks))
        return path


def output_paths(
    out: Path | None, execution_id: str, count: int, extension: str = "png"
) -> list[Path]:
    """Where ``count`` images go: ``out`` (``out-<i>.<ext>`` for several), else ``out/`` (ignored
    by git) named by execution id, with the images' own extension (``png``, ``jpg``, ``webp``)."""
    if out is None:
        return [
            Path("out") / f"imagegen-{execution_id}-{index}.{extension}" for index in range(count)
        ]
    if count == 1:
        return [out]
    suffix = out.suffix or f".{extension}"
    return [out.with_name(f"{out.stem}-{index}{suffix}") for index in range(count)]
