"""``python -m gpu_service.worker`` as its own process against moto in server mode (reached through
boto3's standard ``AWS_ENDPOINT_URL``), as the local stack runs it: when a worker process is killed
(SIGKILL) in the middle of a batch, its engine process exits too, and a second worker finishes the
job of the real execution once the message's visibility runs out, and then exits cleanly on
SIGTERM. The tiny model makes noise images."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from imagegen.local.moto_aws import local_aws
from imagegen_common.models import GenerateRequest, ImageSlot, Job
from tests.gpu_service.conftest import gpu_state_definition

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "images"

# A worker process whose pipeline call never returns: it marks that its batch is in hand and
# waits to be killed. Everything else (its engine process, receive, accept, heartbeats,
# visibility) is the real worker.
STALLED_WORKER = """
import sys, threading, pathlib
from gpu_service import engine_process, worker
def generate_until_killed(self, specs, on_step=None):
    pathlib.Path(sys.argv[1]).touch()
    threading.Event().wait()
engine_process.EngineProcess.generate_images = generate_until_killed
worker.main([])
"""
# The real worker, which waits for a file before it starts: its imports (seconds of torch and
# diffusers) happen while the first worker holds the job, as a replacement task's would.
WORKER_WHEN_TOLD = """
import pathlib, sys, time
from gpu_service import worker
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.05)
worker.main([])
"""


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    """moto's server on 127.0.0.1, as the local stack starts it (``local_aws(server=True)``)."""
    with local_aws(server=True) as aws:
        assert aws.endpoint_url is not None
        yield aws.endpoint_url


@dataclass
class GpuBranch:
    """The queue, the bucket and the workflow's GPU state on the moto server."""

    sqs: Any
    s3: Any
    sfn: Any
    queue_url: str
    state_machine_arn: str

    def start(self, job: Job) -> str:
        return str(
            self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=job.job_id,
                input=json.dumps({"job": job.model_dump(mode="json")}),
            )["executionArn"]
        )

    def status(self, execution_arn: str) -> str:
        return str(self.sfn.describe_execution(executionArn=execution_arn)["status"])

    def in_flight(self) -> int:
        return int(
            self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
        )


@pytest.fixture
def branch(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> GpuBranch:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    sqs, s3, sfn = (boto3.client(name) for name in ("sqs", "s3", "stepfunctions"))
    queue_url = sqs.create_queue(QueueName="gpu-jobs")["QueueUrl"]
    s3.create_bucket(Bucket=BUCKET)
    machine = sfn.create_state_machine(
        name="gpu",
        definition=gpu_state_definition(queue_url),
        roleArn="arn:aws:iam::123456789012:role/x",
    )["stateMachineArn"]
    return GpuBranch(sqs, s3, sfn, queue_url, machine)


def _job(job_id: str) -> Job:
    return Job(
        job_id=job_id,
        owner="anonymous",
        submitted_at=datetime.now(UTC),
        request=GenerateRequest(prompt="a kite over dunes"),
        width=64,
        height=64,
        bucket=BUCKET,
        images=[ImageSlot(index=0, seed=1, s3_key=f"images/{job_id}/0.png")],
        gpu_timeout_seconds=300,
    )


def _worker_environment(branch: GpuBranch, tiny_model_dir: Path, **settings: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "layers" / "common")]),
        "MODEL_ID": str(tiny_model_dir),
        "DEVICE": "cpu",
        "DEFAULT_WIDTH": "64",
        "DEFAULT_HEIGHT": "64",
        "DEFAULT_STEPS": "2",
        "GPU_QUEUE_URL": branch.queue_url,
        "RECEIVE_WAIT_SECONDS": "1",
        **settings,
    }


def _spawn(arguments: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen[str]:
    # Output goes to a file: a pipe nobody reads while the test waits could fill and block it.
    with log.open("w") as output:
        return subprocess.Popen(
            [sys.executable, *arguments],
            env=environment,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _wait_until(
    condition: Callable[[], bool], worker: subprocess.Popen[str], timeout: float, what: str
) -> None:
    """Poll ``condition`` (moto's state, a file) until it holds; fail if the worker exits first
    or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if worker.poll() is not None:
            raise AssertionError(f"the worker exited ({worker.returncode}) before: {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        pause.wait(0.1)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def _stop(worker: subprocess.Popen[str], log: Path) -> str:
    """SIGTERM the worker, wait for it to exit, return its output."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
    return log.read_text()


def test_a_job_whose_worker_process_is_killed_mid_batch_is_finished_by_another(
    branch: GpuBranch, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Short timeouts: the message reappears 2 s after the first worker's last extension.
    environment = _worker_environment(
        branch,
        tiny_model_dir,
        VISIBILITY_TIMEOUT_SECONDS="2",
        HEARTBEAT_INTERVAL_SECONDS="0.5",
        WARMUP="false",  # the first pipeline call is then the job's
    )
    in_batch, go = tmp_path / "batch-in-hand", tmp_path / "second-may-start"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _spawn(["-c", STALLED_WORKER, str(in_batch)], environment, first_log)
    second = _spawn(["-c", WORKER_WHEN_TOLD, str(go)], environment, second_log)
    try:
        try:
            execution = branch.start(_job("killed-1"))
            _wait_until(in_batch.exists, first, 60, "the first worker's batch started")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(timeout=10)
        assert first.returncode == -signal.SIGKILL
        engine_pid = int(re.search(r"engine process (\d+) ready", first_log.read_text())[1])
        _wait_until(
            lambda: not _running(engine_pid), second, 10, "the killed worker's engine exited"
        )
        assert branch.status(execution) == "RUNNING"
        assert branch.in_flight() == 1  # taken, neither reported nor deleted

        go.touch()
        _wait_until(
            lambda: branch.status(execution) != "RUNNING", second, 60, "the execution ended"
        )
        assert branch.status(execution) == "SUCCEEDED", second_log.read_text()
        head = branch.s3.head_object(Bucket=BUCKET, Key="images/killed-1/0.png")
        assert head["ContentLength"] > 0
        assert branch.in_flight() == 0
    finally:
        output = _stop(second, second_log)
    assert second.returncode == 0, output
    assert "job killed-1 accepted: 1 images 64x64 (receive 2)" in output
    assert "finishing the batch in hand" in output  # SIGTERM drains, then the worker exits
    assert "worker stopped" in output
