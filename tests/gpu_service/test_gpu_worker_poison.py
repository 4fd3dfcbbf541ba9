"""Poison messages: nothing a message on the GPU queue contains stops the worker or the rest of its
batch. Bodies with no task token stay on the queue until the redrive policy moves them to the
dead-letter queue; bodies with a token but a bad job fail their task with INVALID_JOB."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from gpu_service.worker import MAX_BODY_CHARACTERS, Worker, parse_body
from tests.gpu_service.conftest import Aws, Spy, make_job, wait_until

DEEP = 10_000
HUGE_INTEGER = "7" * 5_000


def _valid_job() -> dict[str, Any]:
    return make_job().model_dump(mode="json")


def _with_token(token: str, **fields: Any) -> str:
    return json.dumps({"task_token": token, **fields})


# --- Parsing, one body at a time ---------------------------------------------------------------

UNTOKENED: dict[str, object] = {
    "not JSON": "not json at all",
    "truncated JSON": '{"task_token": "abc", "job": {',
    "array nested 10,000 deep": "[" * DEEP + "]" * DEEP,
    "object nested 10,000 deep": '{"a":' * DEEP + "1" + "}" * DEEP,
    "token beside a job nested 10,000 deep": '{"task_token": "t", "job": '
    + "[" * DEEP
    + "]" * DEEP
    + "}",
    "a 5,000-digit integer": HUGE_INTEGER,
    "token beside a 5,000-digit integer": '{"task_token": "t", "seed": ' + HUGE_INTEGER + "}",
    "a JSON array": json.dumps([1, 2, 3]),
    "a JSON string": json.dumps("task_token"),
    "null": "null",
    "no task_token": json.dumps({"job": make_job().model_dump(mode="json")}),
    "task_token a number": json.dumps({"task_token": 12345, "job": {}}),
    "task_token a list": json.dumps({"task_token": ["t"], "job": {}}),
    "empty task_token": json.dumps({"task_token": "", "job": make_job().model_dump(mode="json")}),
    "invalid UTF-8 (bytes)": b'{"task_token": "\xff\xfe", "job": {}}',
    "lone surrogate": '{"task_token": "\ud800", "job": {}}',
    "a body larger than SQS allows": '{"task_token": "t", "job": "'
    + "x" * MAX_BODY_CHARACTERS
    + '"}',
    "no body": None,
    "a dict instead of text": {"task_token": "t"},
}


@pytest.mark.parametrize("body", UNTOKENED.values(), ids=UNTOKENED.keys())
def test_a_body_without_a_usable_token_is_reported_not_raised(body: object) -> None:
    parsed = parse_body(body)
    assert (parsed.envelope, parsed.token) == (None, None)
    assert parsed.problem


TOKENED: dict[str, tuple[str, str]] = {
    "no job": (_with_token("t"), "job: Field required"),
    "job an array": (_with_token("t", job=[1, 2, 3]), "job: Input should be an object"),
    "job a string": (_with_token("t", job="draw a cat"), "job: Input should be an object"),
    "job missing fields": (_with_token("t", job={"nonsense": 1}), "job.job_id: Field required"),
    "width of the wrong type": (
        _with_token("t", job=_valid_job() | {"width": "wide"}),
        "job.width: Input should be a valid integer",
    ),
    "a seed out of range": (
        _with_token("t", job=_valid_job() | {"images": [{"index": 0, "seed": -1, "s3_key": "k"}]}),
        "job.images.0.seed",
    ),
    "a prompt of 200,000 characters": (
        _with_token("t", job=_valid_job() | {"request": {"prompt": "x" * 200_000}}),
        "job.request.prompt",
    ),
    "nested 100 deep (within the parser's limit)": (
        _with_token("t", job="[" * 100 + "]" * 100),
        "job: Input should be an object",
    ),
    "token with a job of many faults": (
        _with_token("t", job={"images": [{}] * 50}),
        "and ",  # the cause names the first problems and counts the rest
    ),
}


@pytest.mark.parametrize(("body", "named"), TOKENED.values(), ids=TOKENED.keys())
def test_a_body_with_a_token_and_a_bad_job_names_the_problem(body: str, named: str) -> None:
    parsed = parse_body(body)
    assert parsed.envelope is None
    assert parsed.token == "t"
    assert parsed.problem is not None
    assert named in parsed.problem
    assert len(parsed.problem) < 2_000  # short enough for a log line and a cause


def test_a_good_body_parses() -> None:
    job = make_job()
    parsed = parse_body(_with_token("tok", job=job.model_dump(mode="json")))
    assert parsed.envelope is not None
    assert (parsed.envelope.job, parsed.token, parsed.problem) == (job, "tok", None)


# --- Through the queue: poison and a good job, one worker ---------------------------------------

SQS_UNTOKENED = {
    name: body
    for name, body in UNTOKENED.items()
    # What SQS itself refuses to carry is fed through a stand-in client below.
    if isinstance(body, str) and len(body) <= 200_000 and "\ud800" not in body
}


def test_poison_messages_neither_stop_the_worker_nor_sink_a_good_job(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    # Tokens of live tasks, sent with bad jobs of the test's making.
    tokened: dict[str, str] = {}  # execution ARN -> body
    for body in (
        lambda token: _with_token(token),
        lambda token: _with_token(token, job=[1, 2, 3]),
        lambda token: _with_token(token, job=_valid_job() | {"width": 100}),
        lambda token: _with_token(token, job={"request": {"prompt": "x" * 200_000}}),
        lambda token: _with_token(token, job=_valid_job() | {"images": []}),
    ):
        execution, token = aws.take_token(make_job())
        tokened[execution] = body(token)
    for body in [*SQS_UNTOKENED.values(), *tokened.values()]:
        aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=body)
    good = aws.start(make_job(images=2))
    aws.wait_for_message(count=len(SQS_UNTOKENED) + len(tokened) + 1)

    sfn = Spy(aws.sfn)
    worker = worker_for(
        stepfunctions=sfn, visibility_timeout_seconds=1, heartbeat_interval_seconds=0.3
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="worker")
    thread.start()
    try:
        assert aws.finished(good)["status"] == "SUCCEEDED"
        for execution in tokened:
            described = aws.finished(execution)
            assert (described["status"], described["error"]) == ("FAILED", "INVALID_JOB")
        # Each untokened body is received MAX_RECEIVES times, then moved to the DLQ.
        wait_until(
            lambda: aws.queue_counts(aws.dead_letter_queue_url)[0] == len(SQS_UNTOKENED),
            timeout=30,
            what="every untokened message in the dead-letter queue",
        )
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()

    assert aws.queue_counts() == (0, 0)
    moved: list[str] = []

    def all_moved_read() -> bool:
        moved.extend(
            message["Body"]
            for message in aws.sqs.receive_message(
                QueueUrl=aws.dead_letter_queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60
            ).get("Messages", [])
        )
        return len(moved) >= len(SQS_UNTOKENED)

    wait_until(all_moved_read, timeout=10, what="the dead-letter queue read")
    assert sorted(moved) == sorted(SQS_UNTOKENED.values())
    causes = [call["cause"] for call in sfn.called("send_task_failure")]
    assert len(causes) == len(tokened)  # moto drops the cause from the execution; the spy has it
    assert all(call["error"] == "INVALID_JOB" for call in sfn.called("send_task_failure"))
    for named in ("job: Field required", "job: Input should be an object", "job.width must be"):
        assert any(named in cause for cause in causes), named
    assert any("job.images is empty" in cause for cause in causes)
    assert len(sfn.called("send_task_success")) == 1


class InjectingSqs:
    """The moto SQS client, except that its first receive also returns messages SQS itself would
    never carry (bytes, lone surrogates, no body, a dict, over 1 MiB). Calls on their receipt
    handles are recorded, not forwarded."""

    def __init__(self, client: Any, injected: list[dict[str, Any]]) -> None:
        self._client = client
        self._injected = injected
        self._fake_handles = {str(message.get("ReceiptHandle")) for message in injected}
        self.on_injected: list[tuple[str, str]] = []  # (call, receipt handle)

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        response = dict(self._client.receive_message(**kwargs))
        if self._injected:
            response["Messages"] = [*self._injected, *response.get("Messages", [])]
            self._injected = []
        return response

    def _forward_unless_injected(self, call: str, **kwargs: Any) -> Any:
        entries = []
        for entry in kwargs.pop("Entries"):
            handle = str(entry.get("ReceiptHandle"))
            if handle in self._fake_handles:
                self.on_injected.append((call, handle))
            else:
                entries.append(entry)
        return getattr(self._client, call)(**kwargs, Entries=entries) if entries else {}

    def delete_message_batch(self, **kwargs: Any) -> Any:
        return self._forward_unless_injected("delete_message_batch", **kwargs)

    def change_message_visibility_batch(self, **kwargs: Any) -> Any:
        return self._forward_unless_injected("change_message_visibility_batch", **kwargs)


def test_bodies_sqs_cannot_carry_are_left_alone_too(
    aws: Aws, worker_for: Callable[..., Worker]
) -> None:
    injected = [
        {"MessageId": "bytes", "ReceiptHandle": "rh-bytes", "Body": b'{"task_token": "\xff"}'},
        {"MessageId": "surrogate", "ReceiptHandle": "rh-surrogate", "Body": '{"a": "\ud800"}'},
        {"MessageId": "no-body", "ReceiptHandle": "rh-no-body"},
        {"MessageId": "dict", "ReceiptHandle": "rh-dict", "Body": {"task_token": "t"}},
        {"MessageId": "huge", "ReceiptHandle": "rh-huge", "Body": "[" * 2 * MAX_BODY_CHARACTERS},
        {"MessageId": "no-receipt-handle", "Body": "[]"},
    ]
    good = aws.start(make_job())
    aws.wait_for_message()
    sqs = InjectingSqs(aws.sqs, injected)
    sfn = Spy(aws.sfn)

    assert worker_for(sqs=sqs, stepfunctions=sfn).poll_once() == len(injected) + 1

    assert aws.finished(good)["status"] == "SUCCEEDED"
    assert sqs.on_injected == []  # neither deleted nor touched: left for the DLQ
    assert sfn.called("send_task_failure") == []
    assert aws.queue_counts() == (0, 0)
