"""``python -m gpu_service.worker`` as its own process against moto in server mode (reached through
boto3's standard ``AWS_ENDPOINT_URL``), as the local stack runs it: it does a job of a real
execution and exits cleanly on SIGTERM. The tiny model makes noise images."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from imagegen_common.models import GenerateRequest, ImageSlot, Job
from tests.gpu_service.conftest import gpu_state_definition

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    port = _free_port()
    monkeypatch.setenv("MOTO_PORT", str(port))  # moto's interpreter calls SQS at localhost:PORT
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    httpx.post(
        f"{endpoint}/moto-api/config", json={"stepfunctions": {"execute_state_machine": True}}
    ).raise_for_status()
    yield endpoint
    server.stop()


def test_worker_process_does_a_job_and_stops_on_sigterm(
    moto_endpoint: str, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    sqs, s3, sfn = (boto3.client(name) for name in ("sqs", "s3", "stepfunctions"))
    queue_url = sqs.create_queue(QueueName="gpu-jobs")["QueueUrl"]
    s3.create_bucket(Bucket="images")
    machine = sfn.create_state_machine(
        name="gpu",
        definition=gpu_state_definition(queue_url),
        roleArn="arn:aws:iam::123456789012:role/x",
    )["stateMachineArn"]
    job = Job(
        job_id="process-1",
        owner="anonymous",
        submitted_at=datetime.now(UTC),
        request=GenerateRequest(prompt="a kite over dunes"),
        width=64,
        height=64,
        images=[ImageSlot(index=0, seed=1, s3_key="images/process-1/0.png")],
    )

    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "layers" / "common")]),
        "MODEL_ID": str(tiny_model_dir),
        "DEVICE": "cpu",
        "DEFAULT_WIDTH": "64",
        "DEFAULT_HEIGHT": "64",
        "DEFAULT_STEPS": "2",
        "GPU_QUEUE_URL": queue_url,
        "RECEIVE_WAIT_SECONDS": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "gpu_service.worker"],
        env=environment,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        execution = sfn.start_execution(
            stateMachineArn=machine,
            name=job.job_id,
            input=json.dumps({"job": job.model_dump(mode="json") | {"bucket": "images"}}),
        )["executionArn"]
        deadline = time.monotonic() + 60
        status = "RUNNING"
        while status == "RUNNING" and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
            status = sfn.describe_execution(executionArn=execution)["status"]
        assert status == "SUCCEEDED"
        assert s3.head_object(Bucket="images", Key="images/process-1/0.png")["ContentLength"] > 0

        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, output
    assert "finishing the batch in hand" in output
    assert "worker stopped" in output
