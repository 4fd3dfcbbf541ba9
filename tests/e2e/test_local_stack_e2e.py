"""End to end: `imagegen local` as the README starts it, driven by `imagegen generate` and
`imagegen invoke`, and how it fails when it cannot start.

Real processes and real ports on 127.0.0.1: the stack in one subprocess (moto server, API on its
own port, Lambda environments and the GPU worker as its child processes, result-event
subscriber), the client in another. The stack is built from a copy of template.yaml with one
function variable changed, so what runs is shown to be the template's, and it records itself
where `imagegen invoke` finds it, removing the record when it stops.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imagegen.local.moto_server import free_port
from imagegen.local.running_stack import STATE_DIR_VARIABLE
from imagegen_common.png import png_size

REPO_ROOT = Path(__file__).resolve().parents[2]
READY = "imagegen local stack ready"
STARTUP_TIMEOUT_S = 240.0


def cli_environment(state_dir: Path | None = None) -> dict[str, str]:
    environment = dict(os.environ)
    for name in ("AWS_ENDPOINT_URL", "MOTO_PORT", "MODEL_ID", "AWS_PROFILE", STATE_DIR_VARIABLE):
        environment.pop(name, None)
    environment.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if state_dir is not None:
        environment[STATE_DIR_VARIABLE] = str(state_dir)
    return environment


def imagegen(
    *args: str, timeout: float = 120.0, state_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagegen.cli", *args],
        cwd=REPO_ROOT,
        env=cli_environment(state_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class LocalStackProcess:
    """`imagegen local` in a subprocess; its output is collected line by line."""

    def __init__(self, *args: str, state_dir: Path | None = None) -> None:
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.state_dir = state_dir
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imagegen.cli", "local", "--port", str(self.api_port), *args],
            cwd=REPO_ROOT,
            env=cli_environment(state_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    found = compiled.search(line)
                    if found:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    output = "\n".join(self.lines[-60:])
                    raise AssertionError(f"no line matching {pattern!r}; output:\n{output}")
                self._changed.wait(min(remaining, 0.5))

    def event_lines(self, execution_id: str, timeout: float = 60.0) -> list[str]:
        """The subscriber's lines for the result event of ``execution_id``."""
        self.wait_for(rf"^\[event\] .*execution_id={execution_id}$", timeout)
        with self._changed:
            lines = list(self.lines)
        start = next(i for i, line in enumerate(lines) if f"execution_id={execution_id}" in line)
        block = [lines[start]]
        for line in lines[start + 1 :]:
            if not line.startswith("        "):
                break
            block.append(line.strip())
        return block

    def stop(self) -> int:
        self.process.send_signal(2)  # Ctrl-C
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()


TTL_IN_THE_COPY = "1234"


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStackProcess]:
    folder = tmp_path_factory.mktemp("template-copy")
    template = (REPO_ROOT / "template.yaml").read_text()
    original = "PRESIGNED_URL_TTL_SECONDS: !Ref PresignedUrlTtlSeconds"
    assert original in template
    (folder / "template.yaml").write_text(
        template.replace(original, f'PRESIGNED_URL_TTL_SECONDS: "{TTL_IN_THE_COPY}"')
    )
    for shared in ("functions", "layers", "statemachine", "events"):
        (folder / shared).symlink_to(REPO_ROOT / shared)
    stack = LocalStackProcess(
        "--template", str(folder / "template.yaml"),
        "--parameter-overrides", "BlockedPromptTerms=forbidden-thing",
        state_dir=tmp_path_factory.mktemp("state"),
    )  # fmt: skip
    try:
        stack.wait_for(READY, STARTUP_TIMEOUT_S)
        yield stack
    finally:
        code = stack.stop()
    assert code == 0, "\n".join(stack.lines[-30:])
    assert stack.lines[-1] == "stopped"
    assert stack.state_dir is not None
    assert not (stack.state_dir / "local-stack.json").exists()  # its record went with it


def execution_id_of(output: str) -> str:
    found = re.search(r"execution_id=([0-9a-zA-Z-]+)", output)
    assert found, output
    return found.group(1)


def test_generate_runs_the_whole_workflow_and_the_event_url_downloads_the_png(
    local_stack: LocalStackProcess, tmp_path: Path
) -> None:
    response = httpx.post(
        f"{local_stack.api_url}/generate",
        json={"prompt": "a lighthouse at dawn", "backend": "gpu", "width": 512, "height": 512},
        headers={"x-api-key": "e2e"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["execution_id"]

    out = tmp_path / "fox.png"
    result = imagegen(
        "generate", "a red fox in the snow", "--backend", "gpu", "--size", "512x512",
        "--seed", "7", "--out", str(out), "--api-url", local_stack.api_url, "--api-key", "e2e",
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "RUNNING" in result.stdout
    assert "SUCCEEDED" in result.stdout
    assert f"wrote {out.resolve()}" in result.stdout
    assert png_size(out.read_bytes()) == (512, 512)
    execution_id = execution_id_of(result.stdout)
    event = local_stack.event_lines(execution_id)
    assert event[0].startswith("[event] Image Generated")
    url = event[1].split(": ", 1)[1]
    assert url.startswith("http://127.0.0.1:")
    assert f"X-Amz-Expires={TTL_IN_THE_COPY}" in url  # the template copy's variable ran
    downloaded = httpx.get(url)
    assert downloaded.status_code == 200
    assert png_size(downloaded.content) == (512, 512)

    status = imagegen("status", execution_id, "--api-url", local_stack.api_url, "--api-key", "e2e")
    assert status.returncode == 0, status.stderr
    assert '"status": "SUCCEEDED"' in status.stdout


def test_a_bad_request_gets_a_4xx_naming_the_field(local_stack: LocalStackProcess) -> None:
    result = imagegen("generate", "a fox", "--size", "100x100", "--api-url", local_stack.api_url)

    assert result.returncode == 1
    assert "HTTP 422" in result.stderr
    assert '"field":"width"' in result.stderr.replace(" ", "")

    empty = httpx.post(f"{local_stack.api_url}/generate", json={"prompt": "   "})
    assert 400 <= empty.status_code < 500
    assert "prompt" in empty.text


def test_an_invalid_prompt_fails_the_execution_with_a_failure_event(
    local_stack: LocalStackProcess,
) -> None:
    result = imagegen(
        "generate", "a photo of a forbidden-thing", "--backend", "gpu",
        "--api-url", local_stack.api_url, "--api-key", "e2e",
    )  # fmt: skip

    assert result.returncode == 1
    assert "FAILED: INVALID_PROMPT" in result.stderr
    event = local_stack.event_lines(execution_id_of(result.stdout))
    assert event[0].startswith("[event] Image Generation Failed")
    assert any("INVALID_PROMPT" in line and "forbidden-thing" in line for line in event)


def test_invoke_finds_the_running_stack_through_its_record(
    local_stack: LocalStackProcess,
) -> None:
    assert local_stack.state_dir is not None
    record = json.loads((local_stack.state_dir / "local-stack.json").read_text())
    assert record["pid"] == local_stack.process.pid

    result = imagegen(
        "invoke", "DescribeFailureFunction", "-e", "events/describe_failure.json",
        "--template", record["template"], state_dir=local_stack.state_dir,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert (
        f"using the local stack at {record['aws_endpoint_url']} (pid {local_stack.process.pid})"
        in result.stderr
    )
    assert "deploying" not in result.stderr
    assert json.loads(result.stdout)["error"]["code"] == "CONTENT_FILTERED"


def test_a_taken_port_fails_with_a_clear_message() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = imagegen("local", "--port", str(port), "--no-gpu-worker", timeout=60)

    assert result.returncode == 3
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr


def test_a_model_that_cannot_load_fails_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = imagegen("local", "--port", str(free_port()), "--model-id", str(missing), timeout=120)

    assert result.returncode == 4
    assert f"cannot load model '{missing}'" in result.stderr


def test_a_model_the_worker_cannot_load_fails_with_the_workers_own_words() -> None:
    # Not a local path, so only the worker process finds out: it exits before it is ready.
    result = imagegen(
        "local", "--port", str(free_port()), "--model-id", "no-such-org/no-such-model",
        timeout=180,
    )  # fmt: skip

    assert result.returncode == 4
    assert "cannot load model 'no-such-org/no-such-model'" in result.stderr
    assert "gpu-worker-1 exited with status" in result.stderr
    assert "no-such-org/no-such-model" in result.stderr.split("its last lines:", 1)[1]
