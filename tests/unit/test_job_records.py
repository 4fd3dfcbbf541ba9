"""The jobs table (imagegen_common.job_records) against moto: create, progress, endings, the GPU
queue, the owner's list and its tokens, webhooks. Events arrive late, twice and out of order here
on purpose: none of that may move a job back or bring an ended one back to life."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from imagegen_common.job_records import (
    InvalidNextTokenError,
    JobsTable,
    apply_ending,
    apply_progress,
    create_job,
    delete_job,
    disable_webhook,
    jobs_table,
    list_jobs,
    queue_position,
    read_job,
    webhook_of,
)
from imagegen_common.models import (
    Backend,
    Cost,
    ErrorCode,
    ErrorInfo,
    ExecutionStatus,
    GenerateRequest,
    ImageGenerationProgressDetail,
    ImageOutcome,
    Job,
    Progress,
    Stage,
)
from tests.jobs_table import create_jobs_table

OWNER = "apikey:key-a"
T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def table() -> Iterator[JobsTable]:
    with mock_aws():
        name = create_jobs_table()
        yield jobs_table(name, retention_days=7, client=boto3.client("dynamodb"))


def submit(
    table: JobsTable,
    job_id: str,
    *,
    owner: str = OWNER,
    at: datetime = T0,
    backend: Backend = Backend.BEDROCK,
    num_images: int = 2,
    webhook: dict[str, object] | None = None,
) -> Job:
    request = GenerateRequest.model_validate(
        {"prompt": f"prompt of {job_id}", "num_images": num_images, "webhook": webhook}
    )
    job = Job(job_id=job_id, owner=owner, submitted_at=at, request=request, backend=backend)
    assert create_job(table, job, backend, "stability.stable-image-core-v1:1")
    return job


def progress(
    job: Job,
    stage: Stage,
    at: datetime,
    *,
    image: ImageOutcome | None = None,
    steps: Progress | None = None,
    owner: str | None = None,
) -> ImageGenerationProgressDetail:
    return ImageGenerationProgressDetail(
        execution_id=job.job_id,
        owner=owner or job.owner,
        stage=stage,
        backend=job.backend,
        progress=steps,
        image=image,
        at=at,
    )


def stored(index: int) -> ImageOutcome:
    return ImageOutcome(
        index=index,
        seed=10 + index,
        bucket="images",
        s3_key=f"images/j/{index}.png",
        width=512,
        height=512,
    )


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def test_a_created_job_reads_back_for_its_owner_only(table: JobsTable) -> None:
    submit(table, "job-1", webhook={"url": "https://hooks.example.com/x"})

    record = read_job(table, "job-1", OWNER)
    assert record is not None
    assert (record.status, record.stage, record.backend) == (
        ExecutionStatus.RUNNING,
        Stage.QUEUED,
        Backend.BEDROCK,
    )
    assert record.submitted_at == record.updated_at == T0
    assert record.prompt == "prompt of job-1" and record.num_images == 2
    assert read_job(table, "job-1", "apikey:key-b") is None
    assert read_job(table, "no-such-job", OWNER) is None
    item = table.client.get_item(TableName=table.name, Key={"job_id": {"S": "job-1"}})["Item"]
    assert int(item["expires_at"]["N"]) == int((T0 + timedelta(days=7)).timestamp())


def test_a_second_create_of_the_same_job_keeps_the_first(table: JobsTable) -> None:
    job = submit(table, "job-1")
    apply_progress(table, progress(job, Stage.GENERATING, T0 + seconds(1)))

    assert not create_job(table, job, Backend.BEDROCK, None)
    record = read_job(table, "job-1", OWNER)
    assert record is not None and record.stage is Stage.GENERATING


def test_progress_applies_only_when_newer(table: JobsTable) -> None:
    job = submit(table, "job-1")
    assert apply_progress(table, progress(job, Stage.SIGNING, T0 + seconds(5)))

    assert not apply_progress(table, progress(job, Stage.GENERATING, T0 + seconds(3)))
    assert not apply_progress(table, progress(job, Stage.SIGNING, T0 + seconds(5)))  # twice
    record = read_job(table, "job-1", OWNER)
    assert record is not None
    assert record.stage is Stage.SIGNING
    assert record.updated_at == T0 + seconds(5)


def test_progress_of_another_owner_or_an_unknown_job_changes_nothing(table: JobsTable) -> None:
    job = submit(table, "job-1")
    assert not apply_progress(
        table, progress(job, Stage.SIGNING, T0 + seconds(1), owner="apikey:key-b")
    )
    stranger = job.model_copy(update={"job_id": "job-unknown"})
    assert not apply_progress(table, progress(stranger, Stage.SIGNING, T0 + seconds(1)))

    record = read_job(table, "job-1", OWNER)
    assert record is not None and record.stage is Stage.QUEUED
    assert read_job(table, "job-unknown", OWNER) is None  # not created by a progress event


def test_image_outcomes_out_of_order_are_all_kept_and_count_as_progress(table: JobsTable) -> None:
    job = submit(table, "job-1", num_images=3)
    start = Progress(step=0, steps=3, percent=0, unit="images")
    apply_progress(table, progress(job, Stage.GENERATING, T0 + seconds(1), steps=start))
    failed = ImageOutcome(
        index=0, seed=10, error=ErrorInfo(code=ErrorCode.CONTENT_FILTERED, message="filtered")
    )
    # Image 2 is reported before image 0, whose event is older: both are facts, both stay.
    assert apply_progress(table, progress(job, Stage.GENERATING, T0 + seconds(3), image=stored(2)))
    assert not apply_progress(table, progress(job, Stage.GENERATING, T0 + seconds(2), image=failed))

    record = read_job(table, "job-1", OWNER)
    assert record is not None
    assert [image.index for image in record.images] == [0, 2]
    assert record.images[0].error is not None and record.images[1].succeeded
    current = record.current_progress()
    assert current is not None
    assert (current.step, current.steps, current.unit, current.percent) == (2, 3, "images", 66.7)
    assert record.started_at == T0 + seconds(1)  # set once, by the first "generating"


def test_an_ending_wins_over_progress_that_arrives_later(table: JobsTable) -> None:
    job = submit(table, "job-1")
    cost = Cost(usd=0.08, basis="2 images at $0.04")
    assert apply_ending(table, "job-1", ExecutionStatus.SUCCEEDED, cost=cost, at=T0 + seconds(2))

    late = progress(job, Stage.GENERATING, T0 + seconds(9), image=stored(1))
    assert not apply_progress(table, late)
    assert not apply_ending(table, "job-1", ExecutionStatus.FAILED)  # a second ending: ignored

    record = read_job(table, "job-1", OWNER)
    assert record is not None
    assert (record.status, record.stage) == (ExecutionStatus.SUCCEEDED, Stage.SUCCEEDED)
    assert record.cost == cost
    assert record.images == []  # the late image did not slip in either
    assert not apply_ending(table, "never-created", ExecutionStatus.ABORTED)


@pytest.mark.parametrize(
    ("status", "stage"),
    [
        (ExecutionStatus.FAILED, Stage.FAILED),
        (ExecutionStatus.TIMED_OUT, Stage.TIMED_OUT),
        (ExecutionStatus.ABORTED, Stage.CANCELLED),
    ],
)
def test_each_ending_has_its_terminal_stage(
    table: JobsTable, status: ExecutionStatus, stage: Stage
) -> None:
    submit(table, "job-1")
    assert apply_ending(table, "job-1", status)
    record = read_job(table, "job-1", OWNER)
    assert record is not None and (record.status, record.stage) == (status, stage)


def test_gpu_queue_positions_count_the_jobs_ahead_and_fall(table: JobsTable) -> None:
    jobs = [
        submit(table, f"gpu-{n}", at=T0 + seconds(n), backend=Backend.GPU, num_images=1)
        for n in range(3)
    ]
    bedrock = submit(table, "bedrock-1", at=T0)
    for n, job in enumerate(jobs):
        apply_progress(table, progress(job, Stage.QUEUED, T0 + seconds(10 + n)))
    apply_progress(table, progress(bedrock, Stage.GENERATING, T0 + seconds(10)))

    def position(job_id: str) -> int | None:
        record = read_job(table, job_id, OWNER)
        assert record is not None
        return queue_position(table, record)

    assert [position(job.job_id) for job in jobs] == [0, 1, 2]
    assert position("bedrock-1") is None
    # The first leaves the queue (a worker took it), the second is cancelled: the last moves up.
    steps = Progress(step=1, steps=4, percent=25, unit="steps")
    apply_progress(table, progress(jobs[0], Stage.GENERATING, T0 + seconds(20), steps=steps))
    apply_ending(table, jobs[1].job_id, ExecutionStatus.ABORTED)
    assert [position(job.job_id) for job in jobs] == [None, None, 0]
    record = read_job(table, jobs[0].job_id, OWNER)
    assert record is not None and record.current_progress() == steps


def test_the_list_is_newest_first_paginated_and_filtered(table: JobsTable) -> None:
    for n in range(7):
        submit(table, f"job-{n}", at=T0 + seconds(n))
    submit(table, "other-owner", owner="apikey:key-b", at=T0 + seconds(100))
    for n in (1, 4):
        apply_ending(table, f"job-{n}", ExecutionStatus.SUCCEEDED)

    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = list_jobs(table, OWNER, limit=3, next_token=token)
        assert len(page.jobs) <= 3
        seen += [job.execution_id for job in page.jobs]
        pages += 1
        token = page.next_token
        if token is None or pages > 5:
            break
    assert seen == [f"job-{n}" for n in reversed(range(7))]

    succeeded = list_jobs(table, OWNER, status=ExecutionStatus.SUCCEEDED, limit=5)
    assert [job.execution_id for job in succeeded.jobs] == ["job-4", "job-1"]
    assert all(job.stage is Stage.SUCCEEDED for job in succeeded.jobs)
    running = list_jobs(table, OWNER, status=ExecutionStatus.RUNNING, limit=100)
    assert [job.execution_id for job in running.jobs] == [
        "job-6",
        "job-5",
        "job-3",
        "job-2",
        "job-0",
    ]
    assert running.jobs[0].prompt == "prompt of job-6" and running.jobs[0].num_images == 2
    assert list_jobs(table, "apikey:nobody").jobs == []


@pytest.mark.parametrize("limit", [0, 101, -1])
def test_a_limit_outside_1_to_100_is_refused(table: JobsTable, limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        list_jobs(table, OWNER, limit=limit)


def test_a_token_not_handed_to_this_caller_is_refused(table: JobsTable) -> None:
    for n in range(3):
        submit(table, f"job-{n}", at=T0 + seconds(n), owner="apikey:key-b")
    token = list_jobs(table, "apikey:key-b", limit=1).next_token
    assert token is not None

    forged = base64.urlsafe_b64encode(json.dumps({"job_id": "x"}).encode()).decode()
    for bad in ("not-base64!!", "e30=", forged, token):  # the last: another caller's token
        with pytest.raises(InvalidNextTokenError):
            list_jobs(table, OWNER, next_token=bad)


def test_the_webhook_is_stored_and_can_be_disabled(table: JobsTable) -> None:
    submit(table, "job-1", webhook={"url": "https://hooks.example.com/x", "events": ["progress"]})
    submit(table, "job-2")

    webhook, disabled = webhook_of(table, "job-1")
    assert webhook is not None and str(webhook.url) == "https://hooks.example.com/x"
    assert [event.value for event in webhook.events] == ["progress"] and not disabled
    disable_webhook(table, "job-1", "410 Gone")
    assert webhook_of(table, "job-1")[1] is True
    assert webhook_of(table, "job-2") == (None, False)
    assert webhook_of(table, "no-such-job") == (None, False)
    disable_webhook(table, "no-such-job", "410 Gone")  # nothing to disable: no item created
    assert webhook_of(table, "no-such-job") == (None, False)


def test_a_job_that_never_started_is_deleted_but_an_ended_one_is_kept(table: JobsTable) -> None:
    submit(table, "job-1")
    submit(table, "job-2")
    apply_ending(table, "job-2", ExecutionStatus.SUCCEEDED)

    delete_job(table, "job-1")
    delete_job(table, "job-2")
    assert read_job(table, "job-1", OWNER) is None
    assert read_job(table, "job-2", OWNER) is not None


def test_every_field_of_a_summary_survives_the_list_indexs_projection(table: JobsTable) -> None:
    """The list reads GSI ByOwner, which holds only the attributes the template projects: a
    summary field the projection leaves out would be lost in the list (moto projects as
    DynamoDB does), so the listed summary must equal the one read from the item itself."""
    job = submit(table, "j-projected", backend=Backend.GPU)
    cost = Cost(usd=0.01, basis="a test")
    assert apply_ending(table, "j-projected", ExecutionStatus.SUCCEEDED, cost=cost, at=T0)

    record = read_job(table, "j-projected", OWNER)
    assert record is not None
    full = record.summary()
    for name, field in type(full).model_fields.items():  # each field set, so each is checked
        value = getattr(full, name)
        assert value is not None and value != field.default, f"{name} is not set in the test"

    [listed] = list_jobs(table, job.owner).jobs
    assert listed == full
