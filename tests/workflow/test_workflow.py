"""The real state machine, run by moto's ASL interpreter on the stack built from template.yaml.

Each test submits a job through the API function (a real API Gateway proxy event), lets the
workflow run with its Lambda tasks dispatched to our handlers in-process, Bedrock answered by the
local stand-in and the GPU queue served by a test worker, then checks the execution's final
status, the PNGs in S3 and the event a subscriber queue received.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from tests.conftest import REPO_ROOT
from tests.workflow.conftest import GPU_PNG_SIZE, Workflow, decoded_size


def assert_event(event: dict[str, Any], detail_type: str, execution_id: str) -> dict[str, Any]:
    assert event["detail-type"] == detail_type
    assert event["source"] == "imagegen"
    detail: dict[str, Any] = event["detail"]
    assert detail["execution_id"] == execution_id
    # 1.1 added `cost` to the Generated and Failed details, 1.2 the controls used and each
    # image's content_type; Cancelled is unchanged.
    expected_version = "1.0" if detail_type == "Image Generation Cancelled" else "1.2"
    assert detail["schema_version"] == expected_version
    return detail


@pytest.mark.parametrize(
    ("model_id", "size", "expected_png"),
    [
        ("stability.stable-image-core-v1:1", (1024, 1024), (1024, 1024)),
        ("stability.stable-image-ultra-v1:1", (1344, 768), None),
        ("stability.sd3-5-large-v1:0", (768, 1344), None),
    ],
)
def test_bedrock_branch_succeeds_with_each_stability_model(
    workflow: Workflow,
    model_id: str,
    size: tuple[int, int],
    expected_png: tuple[int, int] | None,
) -> None:
    execution_id = workflow.submit(
        {
            "prompt": "a lighthouse at dawn",
            "model_id": model_id,
            "width": size[0],
            "height": size[1],
            "seed": 7,
        }
    )

    execution = workflow.wait(execution_id)
    assert execution["status"] == "SUCCEEDED", execution
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generated", execution_id)
    [image] = detail["images"]
    assert detail["model_id"] == model_id
    png = workflow.png(image["s3_uri"].split("/", 3)[3])
    assert decoded_size(png) == (image["width"], image["height"])
    if expected_png:
        assert decoded_size(png) == expected_png
    assert [call.model_id for call in workflow.bedrock.calls] == [model_id]
    status_code, status = workflow.status(execution_id)
    assert status_code == 200 and status["status"] == "SUCCEEDED"
    assert status["images"][0]["width"] == image["width"]
    assert "X-Amz-Signature" in status["images"][0]["url"]


def test_a_bedrock_job_by_aspect_ratio_in_jpeg_is_stored_and_reported_as_it_ran(
    workflow: Workflow,
) -> None:
    execution_id = workflow.submit(
        {"prompt": "a long harbour", "aspect_ratio": "21:9", "output_format": "jpeg", "seed": 3}
    )

    assert workflow.wait(execution_id)["status"] == "SUCCEEDED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generated", execution_id)
    [image] = detail["images"]
    assert (image["width"], image["height"], image["content_type"]) == (1536, 640, "image/jpeg")
    assert image["s3_uri"].endswith("/0.jpg")
    parameters = detail["parameters"]
    assert (parameters["aspect_ratio"], parameters["output_format"]) == ("21:9", "jpeg")
    assert (parameters["width"], parameters["height"], parameters["output_quality"]) == (
        1536,
        640,
        90,
    )
    assert parameters.get("steps") is None  # Bedrock's models take none
    [call] = workflow.bedrock.calls
    assert (call.body["aspect_ratio"], call.body["output_format"]) == ("21:9", "jpeg")
    import io

    from PIL import Image

    stored = Image.open(io.BytesIO(workflow.png(image["s3_uri"].split("/", 3)[3])))
    assert stored.format == "JPEG"
    status_code, status = workflow.status(execution_id)
    assert status_code == 200
    assert status["parameters"] == parameters
    assert status["images"][0]["content_type"] == "image/jpeg"


def test_several_images_fan_out_and_one_filtered_image_does_not_sink_the_others(
    workflow: Workflow,
) -> None:
    workflow.bedrock.fail_next("filter_output", times=1)
    execution_id = workflow.submit({"prompt": "three boats", "num_images": 3, "seed": 100})

    assert workflow.wait(execution_id)["status"] == "SUCCEEDED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generated", execution_id)
    assert len(detail["images"]) == 2
    [failed] = detail["failed_images"]
    assert failed["error"]["code"] == "CONTENT_FILTERED"
    assert {image["seed"] for image in detail["images"]} | {failed["seed"]} == {100, 101, 102}
    assert len(workflow.bedrock.calls) == 3


def test_gpu_branch_is_completed_by_the_worker_with_the_task_token(workflow: Workflow) -> None:
    workflow.serve_gpu_queue("succeed")
    execution_id = workflow.submit({"prompt": "a red bicycle", "backend": "gpu", "num_images": 2})

    assert workflow.wait(execution_id)["status"] == "SUCCEEDED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generated", execution_id)
    assert detail["backend"] == "gpu"
    assert len(detail["images"]) == 2
    for image in detail["images"]:
        assert decoded_size(workflow.png(image["s3_uri"].split("/", 3)[3])) == GPU_PNG_SIZE
    assert workflow.bedrock.calls == []


def test_invalid_prompt_fails_with_a_failure_event(workflow: Workflow) -> None:
    execution_id = workflow.submit({"prompt": "a photo of a forbidden-thing"})

    execution = workflow.wait(execution_id)
    assert execution["status"] == "FAILED"
    assert execution["error"] == "INVALID_PROMPT"
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generation Failed", execution_id)
    assert detail["error"]["code"] == "INVALID_PROMPT"
    assert "forbidden-thing" in detail["error"]["message"]
    assert workflow.bedrock.calls == []
    _, status = workflow.status(execution_id)
    assert status["status"] == "FAILED"
    assert status["error"]["code"] == "INVALID_PROMPT"


def test_content_filtered_prompt_fails_with_its_code(workflow: Workflow) -> None:
    workflow.bedrock.fail_next("filter_prompt")
    execution_id = workflow.submit({"prompt": "something the filter blocks"})

    assert workflow.wait(execution_id)["status"] == "FAILED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generation Failed", execution_id)
    assert detail["error"]["code"] == "CONTENT_FILTERED"
    assert len(workflow.bedrock.calls) == 1  # a filtered prompt is never retried


def test_throttling_is_retried_then_succeeds(workflow: Workflow) -> None:
    workflow.bedrock.fail_next("throttle", times=2)
    execution_id = workflow.submit({"prompt": "a busy harbour"})

    assert workflow.wait(execution_id, timeout_s=90)["status"] == "SUCCEEDED"
    [event] = workflow.result_events(execution_id)
    assert_event(event, "Image Generated", execution_id)
    assert len(workflow.bedrock.calls) == 3


def test_permanent_model_error_fails_without_retries(workflow: Workflow) -> None:
    workflow.bedrock.fail_next("inference_error")
    execution_id = workflow.submit({"prompt": "a quiet street"})

    assert workflow.wait(execution_id)["status"] == "FAILED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generation Failed", execution_id)
    assert detail["error"]["code"] == "MODEL_ERROR"
    assert len(workflow.bedrock.calls) == 1


def test_unavailable_model_falls_back_to_the_gpu_queue(
    workflow_factory: Callable[..., Workflow],
) -> None:
    workflow = workflow_factory(FallbackBackend="gpu")
    workflow.bedrock.unavailable_models.add("stability.stable-image-core-v1:1")
    workflow.serve_gpu_queue("succeed")
    execution_id = workflow.submit({"prompt": "a mountain lake"})

    assert workflow.wait(execution_id)["status"] == "SUCCEEDED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generated", execution_id)
    assert detail["backend"] == "gpu"
    assert (
        decoded_size(workflow.png(detail["images"][0]["s3_uri"].split("/", 3)[3])) == GPU_PNG_SIZE
    )


def test_a_job_falling_back_to_the_gpu_gets_a_queue_position(
    workflow_factory: Callable[..., Workflow],
) -> None:
    workflow = workflow_factory(FallbackBackend="gpu")
    workflow.bedrock.unavailable_models.add("stability.stable-image-core-v1:1")
    execution_id = workflow.submit({"prompt": "a mountain lake"})

    wait_for_gpu_queue(workflow, execution_id)  # waits on a queue nobody serves yet
    _, status = workflow.status(execution_id)
    assert (status["stage"], status["backend"], status["queue_position"]) == ("queued", "gpu", 0)
    workflow.serve_gpu_queue("succeed")
    assert workflow.wait(execution_id)["status"] == "SUCCEEDED"


def test_unavailable_model_without_fallback_fails_with_its_code(workflow: Workflow) -> None:
    workflow.bedrock.unavailable_models.add("stability.stable-image-core-v1:1")
    execution_id = workflow.submit({"prompt": "a mountain lake"})

    assert workflow.wait(execution_id)["status"] == "FAILED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generation Failed", execution_id)
    assert detail["error"]["code"] == "MODEL_UNAVAILABLE"


def test_cancel_of_a_queued_gpu_job_ends_it_with_one_cancelled_event(workflow: Workflow) -> None:
    execution_id = workflow.submit({"prompt": "a slow job", "backend": "gpu"})
    wait_for_gpu_queue(workflow, execution_id)  # waits on a queue nobody serves

    status_code, body = workflow.status(execution_id, method="DELETE")
    assert status_code == 202, body
    assert body["status"] in {"ABORTED", "CANCELLING"}
    assert workflow.wait(execution_id)["status"] == "ABORTED"
    code, body = workflow.status(execution_id, method="DELETE")
    assert code == 409, body  # it has ended: nothing left to cancel, and no second event
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generation Cancelled", execution_id)
    assert detail["owner"] == workflow.owner
    _, status = workflow.status(execution_id)
    assert status["status"] == "ABORTED"


def test_an_execution_stopped_outside_the_api_still_gets_its_one_event(workflow: Workflow) -> None:
    execution_id = workflow.submit({"prompt": "stopped from the console", "backend": "gpu"})
    wait_for_gpu_queue(workflow, execution_id)

    workflow.sfn.stop_execution(executionArn=workflow.execution_arn(execution_id))

    assert workflow.wait(execution_id)["status"] == "ABORTED"
    [event] = workflow.result_events(execution_id)
    assert_event(event, "Image Generation Cancelled", execution_id)


@pytest.mark.parametrize("delay_s", [0.0, 0.2, 0.5, 1.0])
def test_cancel_racing_the_end_of_a_bedrock_job_gives_one_event_matching_the_status(
    workflow: Workflow, delay_s: float
) -> None:
    execution_id = workflow.submit({"prompt": "a race", "num_images": 2})
    time.sleep(delay_s)  # where in the workflow the DELETE lands is what the race varies

    code, body = workflow.status(execution_id, method="DELETE")
    assert code in {202, 409}, body
    final = workflow.wait(execution_id)["status"]
    [event] = workflow.result_events(execution_id)
    expected = {
        "SUCCEEDED": "Image Generated",
        "ABORTED": "Image Generation Cancelled",
        "FAILED": "Image Generation Failed",
    }[final]
    if final == "ABORTED" and event["detail-type"] == "Image Generated":
        # The stop landed after "Emit Image Generated" had put the event, before the execution
        # closed: a published event cannot be taken back, and no second one follows
        # (docs/api.md, DELETE). Only that order may pair ABORTED with it.
        history = workflow.sfn.get_execution_history(
            executionArn=workflow.execution_arn(execution_id)
        )["events"]
        assert any(
            e["type"] == "TaskSucceeded"
            and e.get("taskSucceededEventDetails", {}).get("resourceType") == "events"
            for e in history
        ), "ABORTED with Image Generated, but the event was not put before the stop"
        expected = "Image Generated"
    assert_event(event, expected, execution_id)


def test_a_gpu_job_past_its_deadline_fails_with_timeout(
    workflow_factory: Callable[..., Workflow],
) -> None:
    workflow = workflow_factory(GpuJobTimeoutSeconds="5")
    execution_id = workflow.submit({"prompt": "no worker comes", "backend": "gpu"})

    execution = workflow.wait(execution_id, timeout_s=30)
    assert execution["status"] == "FAILED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generation Failed", execution_id)
    assert detail["error"]["code"] == "TIMEOUT"


def test_a_gpu_job_whose_workers_keep_dying_fails_with_worker_lost(
    workflow_factory: Callable[..., Workflow],
) -> None:
    workflow = workflow_factory(GpuJobMaxReceives="2")
    workflow.serve_gpu_queue("die", jobs=3)
    execution_id = workflow.submit({"prompt": "a job that kills its workers", "backend": "gpu"})

    execution = workflow.wait(execution_id, timeout_s=30)
    assert execution["status"] == "FAILED"
    [event] = workflow.result_events(execution_id)
    detail = assert_event(event, "Image Generation Failed", execution_id)
    assert detail["error"]["code"] == "WORKER_LOST"
    dead_letters = boto3.client("sqs").get_queue_attributes(
        QueueUrl=workflow.stack.queues["GpuJobDeadLetterQueue"],
        AttributeNames=["ApproximateNumberOfMessages"],
    )
    assert dead_letters["Attributes"]["ApproximateNumberOfMessages"] == "0"  # drained


def test_the_gpu_state_has_a_deadline_and_no_heartbeat_timeout() -> None:
    """Queue wait must not count as a dead worker: no HeartbeatSeconds; one deadline instead."""
    definition = json.loads((REPO_ROOT / "statemachine/generate_image.asl.json").read_text())
    gpu_state = definition["States"]["Generate on GPU"]
    assert "HeartbeatSeconds" not in gpu_state
    assert "HeartbeatSecondsPath" not in gpu_state
    assert gpu_state["TimeoutSecondsPath"] == "$.job.gpu_timeout_seconds"


def test_status_reports_the_stage_while_running(workflow: Workflow) -> None:
    execution_id = workflow.submit({"prompt": "a job waiting for a GPU", "backend": "gpu"})

    positions = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and 0 not in positions:
        _, status = workflow.status(execution_id)
        assert status["status"] == "RUNNING"  # nobody serves the GPU queue yet
        assert status["stage"] == "queued", status  # from submit until a worker takes it
        positions.append(status["queue_position"])
        time.sleep(0.05)
    assert positions[-1] == 0  # in the GPU queue (once validated), nobody ahead
    assert set(positions) <= {None, 0}, positions
    workflow.serve_gpu_queue("succeed")
    assert workflow.wait(execution_id)["status"] == "SUCCEEDED"


def wait_for_gpu_queue(workflow: Workflow, execution_id: str, timeout_s: float = 20) -> None:
    """Until the job waits in the GPU queue (validated and sent there: it has a position)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if workflow.status(execution_id)[1].get("queue_position") is not None:
            return
        time.sleep(0.05)
    raise AssertionError(f"{execution_id} never reached the GPU queue")
