"""Fixtures of the workflow suite: template.yaml deployed in moto (in this process, through the
local stack's one door, ``imagegen.local.moto_aws.local_aws``), the workflow executed for real.

A deployment takes seconds, so each parameter set is deployed once per run, as a stack of its
own in the suite's one moto (``workflow_factory(**parameters)``), and the tests that ask for the
same parameters share it. Tests keep apart on a stack by owner (each test calls the API with its
own API key id), by execution (events and queues are read per execution id) and in time: each
test starts on an idle stack (no execution running, nothing left on the GPU queue), with the
Bedrock stand-in's script reset. "Exactly one event" is checked once ReportJobEndingFunction
has returned for the execution and the result queue has been read to its end (tests/endings.py),
never after a stretch of silence.

The deployer's own tests (test_local_*.py) open a moto of their own (``aws``); they run before
the shared one opens (tests/conftest.py orders them).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from imagegen.local.deploy import DeployedStack, deploy_stack
from imagegen.local.fake_bedrock import FakeBedrock
from imagegen.local.lambda_runtime import LambdaRuntime
from imagegen.local.moto_aws import LocalAws, local_aws
from imagegen_common.models import GenerationResult, GpuJobMessage, ImageOutcome
from tests.conftest import REPO_ROOT, load_event
from tests.e2e.local_stack_harness import key_for
from tests.endings import EndingsSeen

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}
GPU_PNG_SIZE = (512, 512)
TEMPLATE = REPO_ROOT / "template.yaml"
IDLE_TIMEOUT_S = 60.0


@pytest.fixture
def aws() -> Iterator[LocalAws]:
    """moto in this process, with the local stack's config and work-arounds (undone after): for
    the deployer's own tests."""
    with local_aws() as aws:
        yield aws


def tiny_png(width: int, height: int) -> bytes:
    """A real, decodable PNG (what the test GPU worker 'generates')."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def decoded_size(png: bytes) -> tuple[int, int]:
    """Decode the whole PNG (not just its header) and return its size."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


@dataclass
class WorkflowStack:
    """One deployment of the template, shared by the tests that ask for its parameters."""

    stack: DeployedStack
    endings: EndingsSeen
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Result events read from ResultEventsQueue so far, by execution id."""

    @property
    def machine(self) -> str:
        return self.stack.only("state_machines")

    def read_result_events(self) -> None:
        """Read ResultEventsQueue to its end (in-process moto: what was sent is there now)."""
        sqs = boto3.client("sqs")
        queue_url = self.stack.queues["ResultEventsQueue"]
        while True:
            # WaitTimeSeconds=0: the queue long-polls by default, and its end is what is sought.
            messages = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not messages:
                return
            for message in messages:
                event = json.loads(message["Body"])
                execution_id = event["detail"]["execution_id"]
                self.events.setdefault(execution_id, []).append(event)
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    def wait_until_idle(self) -> None:
        """No execution of this stack running and nothing on its GPU queue: where a test starts.
        A message left there belongs to an ended job (one cancelled while it waited)."""
        sfn, sqs = boto3.client("stepfunctions"), boto3.client("sqs")
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while sfn.list_executions(stateMachineArn=self.machine, statusFilter="RUNNING")[
            "executions"
        ]:
            assert time.monotonic() < deadline, "the executions of earlier tests did not end"
            time.sleep(0.05)
        queue_url = self.stack.queues["GpuJobQueue"]
        while messages := sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", []):
            for message in messages:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        self.read_result_events()


class WorkflowStacks:
    """The suite's deployments, one per (template, parameters), made on first use."""

    def __init__(self) -> None:
        self._stacks: dict[tuple[Path, tuple[tuple[str, str], ...]], WorkflowStack] = {}

    def get(self, template: Path, parameters: dict[str, str]) -> WorkflowStack:
        key = (template, tuple(sorted(parameters.items())))
        if key not in self._stacks:
            endings = EndingsSeen()
            runtime = LambdaRuntime()
            runtime.add_invocation_listener(endings)
            stack = deploy_stack(
                template,
                parameters=parameters or None,
                stack_name=f"workflow-{len(self._stacks) + 1}",
                runtime=runtime,
            )
            self._stacks[key] = WorkflowStack(stack, endings)
        return self._stacks[key]


@pytest.fixture(scope="session")
def workflow_moto() -> Iterator[LocalAws]:
    """The suite's one moto, open until the run ends."""
    with local_aws() as opened:
        yield opened


@pytest.fixture(scope="session")
def bedrock(workflow_moto: LocalAws) -> Iterator[FakeBedrock]:
    """The Bedrock stand-in every stack's functions call (its script is reset for each test)."""
    with FakeBedrock() as stand_in, pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", stand_in.endpoint_url)
        yield stand_in


@pytest.fixture(scope="session")
def workflow_stacks(workflow_moto: LocalAws, bedrock: FakeBedrock) -> WorkflowStacks:
    return WorkflowStacks()


@dataclass
class Workflow:
    """One test's handle on a deployed stack: its own caller, its executions, its events."""

    deployed: WorkflowStack
    bedrock: FakeBedrock
    api_key_id: str
    worker_threads: list[threading.Thread] = field(default_factory=list)
    closing: threading.Event = field(default_factory=threading.Event)
    """Set when the test ends: the stand-in GPU workers stop before the next test."""

    @property
    def stack(self) -> DeployedStack:
        return self.deployed.stack

    @property
    def owner(self) -> str:
        """The owner the API records for this test's jobs."""
        return f"apikey:{self.api_key_id}"

    @property
    def sfn(self) -> Any:
        return boto3.client("stepfunctions")

    @property
    def bucket(self) -> str:
        return self.stack.only("buckets")

    def api(self, event: dict[str, Any]) -> dict[str, Any]:
        """ApiFunction's answer to an API Gateway proxy event, as this test's caller."""
        event = copy.deepcopy(event)
        event["requestContext"]["identity"]["apiKeyId"] = self.api_key_id
        response: dict[str, Any] = self.stack.invoke("ApiFunction", event)
        return response

    def submit(self, body: dict[str, Any]) -> str:
        event = copy.deepcopy(load_event("api_post_generate.json"))
        event["body"] = json.dumps(body)
        response = self.api(event)
        assert response["statusCode"] == 202, response["body"]
        return str(json.loads(response["body"])["execution_id"])

    def status(self, execution_id: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
        name = "api_get_generate.json" if method == "GET" else "api_delete_generate.json"
        event = copy.deepcopy(load_event(name))
        event["pathParameters"] = {"execution_id": execution_id}
        event["path"] = f"/generate/{execution_id}"
        response = self.api(event)
        return response["statusCode"], json.loads(response["body"])

    def wait(self, execution_id: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        arn = self.execution_arn(execution_id)
        while time.monotonic() < deadline:
            execution: dict[str, Any] = self.sfn.describe_execution(executionArn=arn)
            if execution["status"] in TERMINAL:
                return execution
            time.sleep(0.05)
        raise AssertionError(f"{execution_id} still running after {timeout_s} s")

    def execution_arn(self, execution_id: str) -> str:
        return self.deployed.machine.replace(":stateMachine:", ":execution:") + ":" + execution_id

    def result_events(self, execution_id: str, timeout_s: float = 30) -> list[dict[str, Any]]:
        """Every result event of the execution, once none can still come: its ending has been
        reported (ReportJobEndingFunction returned) and the result queue read to its end."""
        self.deployed.endings.wait_for([execution_id], timeout_s)
        self.deployed.read_result_events()
        return list(self.deployed.events.get(execution_id, []))

    def png(self, key: str) -> bytes:
        return bytes(boto3.client("s3").get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def serve_gpu_queue(self, behaviour: str = "succeed", jobs: int = 1) -> None:
        """A stand-in for the GPU worker: take jobs off the queue and report with the token."""

        def work() -> None:
            sqs = boto3.client("sqs")
            queue_url = self.stack.queues["GpuJobQueue"]
            done = 0
            deadline = time.monotonic() + 60
            while done < jobs and not self.closing.is_set() and time.monotonic() < deadline:
                answer = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)
                for message in answer.get("Messages", []):
                    job_message = GpuJobMessage.model_validate_json(message["Body"])
                    if behaviour == "die":
                        # A worker that took the job and died: no report, no delete; the
                        # message comes back at once (visibility 0) for the next one.
                        sqs.change_message_visibility(
                            QueueUrl=queue_url,
                            ReceiptHandle=message["ReceiptHandle"],
                            VisibilityTimeout=0,
                        )
                        done += 1
                        continue
                    self._complete_gpu_job(job_message)
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                    done += 1

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        self.worker_threads.append(thread)

    def _complete_gpu_job(self, message: GpuJobMessage) -> None:
        job = message.job
        outcomes = []
        for slot in job.images:
            boto3.client("s3").put_object(
                Bucket=job.bucket or self.bucket, Key=slot.s3_key, Body=tiny_png(*GPU_PNG_SIZE)
            )
            outcomes.append(
                ImageOutcome(
                    index=slot.index,
                    seed=slot.seed,
                    bucket=job.bucket or self.bucket,
                    s3_key=slot.s3_key,
                    width=GPU_PNG_SIZE[0],
                    height=GPU_PNG_SIZE[1],
                )
            )
        self.sfn.send_task_success(
            taskToken=message.task_token,
            output=GenerationResult(images=outcomes).model_dump_json(),
        )


@pytest.fixture
def workflow_factory(
    workflow_stacks: WorkflowStacks, bedrock: FakeBedrock, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Workflow]]:
    """``create(template=..., **parameters)``: this test's handle on the stack deployed with those
    parameters (deployed on first use), idle, with the Bedrock stand-in's script reset."""
    created: list[Workflow] = []

    def create(template: Path = TEMPLATE, **parameters: str) -> Workflow:
        deployed = workflow_stacks.get(template, parameters)
        deployed.wait_until_idle()
        bedrock.reset()
        workflow = Workflow(deployed, bedrock, key_for(request.node.nodeid))
        created.append(workflow)
        return workflow

    yield create
    for workflow in created:
        workflow.closing.set()
        for thread in workflow.worker_threads:
            thread.join(timeout=5)
            assert not thread.is_alive(), "a stand-in GPU worker did not stop"


@pytest.fixture
def workflow(workflow_factory: Callable[..., Workflow]) -> Workflow:
    return workflow_factory(BlockedPromptTerms="forbidden-thing")
