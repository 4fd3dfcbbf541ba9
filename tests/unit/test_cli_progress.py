"""`imagegen generate` following a job: plain progress lines without a terminal, the rich bar on
one. The API is a scripted stand-in on 127.0.0.1 that answers ``POST /generate``, a list of
``GET /generate/{id}`` bodies in turn, and the image download."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from imagegen.cli import main
from imagegen.progress_display import PlainJobDisplay, RichJobDisplay, describe, job_display
from imagegen_common.models import JobStatus

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2048
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).isoformat()


def _status(status: str = "RUNNING", **fields: Any) -> dict[str, Any]:
    return {"execution_id": "job-1", "status": status, "submitted_at": NOW, **fields}


def _progress(
    step: int, steps: int, percent: float, eta: float | None, unit: str = "steps"
) -> dict[str, Any]:
    return {"step": step, "steps": steps, "percent": percent, "unit": unit, "eta_seconds": eta}


class ScriptedApi:
    """Answers GET /generate/job-1 with ``statuses`` one after the other (the last one for
    ever); the image at /image.png."""

    def __init__(self, statuses: list[dict[str, Any]]) -> None:
        self.statuses = statuses
        self.polls = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = {"execution_id": "job-1", "status_url": f"{api.url}/generate/job-1"}
                self._send(202, json.dumps(body).encode(), "application/json")

            def do_GET(self) -> None:
                if self.path == "/image.png":
                    self._send(200, PNG, "image/png")
                    return
                status = api.statuses[min(api.polls, len(api.statuses) - 1)]
                api.polls += 1
                self._send(200, json.dumps(status).encode(), "application/json")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _gpu_job(url: str) -> list[dict[str, Any]]:
    image = {"url": f"{url}/image.png", "expires_at": NOW, "width": 64, "height": 64, "seed": 7}
    return [
        _status(stage="queued", queue_position=2, backend="gpu"),
        _status(stage="queued", queue_position=1, backend="gpu"),
        _status(stage="generating", backend="gpu", progress=_progress(0, 10, 0.0, None)),
        _status(stage="generating", backend="gpu", progress=_progress(4, 10, 40.0, 3.0)),
        _status(stage="storing", backend="gpu", progress=_progress(10, 10, 100.0, 0.0)),
        _status("SUCCEEDED", stage="succeeded", backend="gpu", images=[image]),
    ]


@pytest.fixture
def gpu_api() -> Iterator[ScriptedApi]:
    with ScriptedApi([]) as api:
        api.statuses = _gpu_job(api.url)
        yield api


def test_generate_without_a_terminal_prints_the_queue_the_steps_and_the_download(
    gpu_api: ScriptedApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fox.png"

    code = main(
        ["generate", "a fox", "--backend", "gpu", "--api-url", gpu_api.url, "--out", str(out)]
    )

    assert code == 0
    assert out.read_bytes() == PNG
    lines = capsys.readouterr().out.splitlines()
    shown = [line.split("] ", 1)[1] for line in lines if line.startswith("[")]
    assert shown == [
        "RUNNING queued (position 2)",
        "RUNNING queued (position 1)",
        "RUNNING generating: step 0/10, 0%",
        "RUNNING generating: step 4/10, 40%, ETA 3 s",
        "RUNNING storing: step 10/10, 100%, ETA 0 s",
        "SUCCEEDED succeeded",
    ]
    assert lines[0] == "submitted: execution_id=job-1"
    assert "downloading fox.png" in lines
    assert lines[-1] == f"wrote {out.resolve()} (64x64)"


def test_a_failed_job_is_reported_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = _status(
        "FAILED", stage="failed", error={"code": "MODEL_ERROR", "message": "the model broke"}
    )
    with ScriptedApi([failed]) as api:
        assert (
            main(["generate", "a fox", "--api-url", api.url, "--out", str(tmp_path / "x.png")]) == 1
        )
    assert "FAILED: MODEL_ERROR: the model broke" in capsys.readouterr().err


def test_bedrock_jobs_count_images() -> None:
    status = JobStatus.model_validate(
        _status(
            stage="generating", backend="bedrock", progress=_progress(1, 4, 25.0, None, "images")
        )
    )
    assert describe(status) == "generating: image 1/4, 25%"


def test_a_status_without_progress_fields_still_reads() -> None:
    # What an API without progress answers (status only): no stage, no position.
    assert (
        describe(JobStatus.model_validate({"execution_id": "x", "status": "RUNNING"})) == "running"
    )
    assert (
        describe(JobStatus.model_validate({"execution_id": "x", "status": "ABORTED"})) == "aborted"
    )


def test_the_rich_bar_shows_position_steps_eta_and_download() -> None:
    buffer = io.StringIO()
    display = RichJobDisplay(Console(file=buffer, force_terminal=True, width=120))
    for body in _gpu_job("http://127.0.0.1:1")[:-1]:
        display.update(JobStatus.model_validate(body), 1.0)
        display.refresh()
        if body.get("queue_position") == 2:
            assert "queued (position 2)" in buffer.getvalue()
    display.download("fox.png", 1024, 2048)
    display.refresh()
    display.close()
    text = buffer.getvalue()
    assert "generating step 4/10" in text and "ETA 3 s" in text and "40%" in text
    assert "downloading fox.png" in text


def test_the_display_is_plain_lines_without_a_terminal() -> None:
    assert isinstance(job_display(io.StringIO()), PlainJobDisplay)
