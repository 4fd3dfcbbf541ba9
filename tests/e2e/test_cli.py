"""`imagegen invoke` against the running local stack and on a stack of its own, the record
`imagegen local` leaves for it, the sample events' names, and the client when things go wrong.
(`imagegen local` as a process, and invoke through its record: test_local_stack_e2e.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from imagegen.cli import main
from imagegen.client import output_paths
from imagegen.local.deploy import DeployedStack
from imagegen.local.moto_server import free_port
from imagegen.local.running_stack import (
    STATE_DIR_VARIABLE,
    NoRunningStackError,
    StackRecord,
    find_running_stack,
    record_path,
    remove_record,
    write_record,
)
from imagegen.local.sample_events import SAMPLE_NAMES, resolve_sample_names, stack_names
from imagegen.local.stack import LocalStack
from tests.e2e.local_stack_harness import Harness

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS_DIR = REPO_ROOT / "events"
TEMPLATE = REPO_ROOT / "template.yaml"
SAMPLE_EVENTS = sorted(path.name for path in EVENTS_DIR.glob("*.json"))


def run_cli(
    *args: str, state_dir: Path, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """`imagegen ...` in a process of its own, finding running stacks only in ``state_dir``."""
    environment = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    environment[STATE_DIR_VARIABLE] = str(state_dir)
    return subprocess.run(
        [sys.executable, "-m", "imagegen.cli", *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


# --- Without a running stack: one deployed for the call ----------------------------------------


def test_invoke_without_a_running_stack_deploys_one_and_says_so(tmp_path: Path) -> None:
    result = run_cli(
        "invoke", "ValidatePromptFunction", "-e", "events/validate_prompt.json", state_dir=tmp_path
    )

    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)  # standard output is the result alone
    # the bucket comes from the stack the template created, not from the sample event
    assert job["bucket"].startswith("imagegen-local-imagesbucket-")
    assert "no local stack is running" in result.stderr
    assert "deploying template.yaml into an in-process moto ..." in result.stderr
    assert re.search(r"deployed stack imagegen-local in \d+\.\d s", result.stderr)
    assert "invoking ValidatePromptFunction" in result.stderr
    assert re.search(r"ValidatePromptFunction returned in \d+\.\d\d s", result.stderr)


def test_invoke_reports_the_handler_error_and_fails(tmp_path: Path) -> None:
    result = run_cli(
        "invoke", "ValidatePromptFunction", "-e", "events/validate_prompt_blocked_term.json",
        "--parameter-overrides", "BlockedPromptTerms=forbidden-thing", state_dir=tmp_path,
    )  # fmt: skip

    assert result.returncode == 1
    assert json.loads(result.stdout)["errorType"] == "InvalidPromptError"
    assert "--parameter-overrides wants a stack of its own" in result.stderr


def test_invoke_names_the_functions_when_the_id_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path))

    code = main(["invoke", "NoSuchFunction", "-e", str(EVENTS_DIR / "validate_prompt.json")])

    assert code == 2
    error = capsys.readouterr().err
    assert "ValidatePromptFunction" in error
    assert "deploying" not in error  # read from the template, before any deployment


# --- The record of a running stack ------------------------------------------------------------


def _record(pid: int, endpoint: str = "http://127.0.0.1:9") -> StackRecord:
    return StackRecord(
        pid=pid,
        aws_endpoint_url=endpoint,
        api_url="http://127.0.0.1:3000",
        stack_name="imagegen-local",
        region="us-east-1",
        template=TEMPLATE,
        started_at="2026-11-29T12:00:00+00:00",
    )


def test_a_record_is_written_where_it_is_found_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path))
    record = _record(os.getpid())

    assert write_record(record) == record_path(TEMPLATE) == tmp_path / "local-stack.json"
    assert StackRecord.from_json((tmp_path / "local-stack.json").read_text()) == record


def test_without_the_variable_the_record_is_next_to_the_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(STATE_DIR_VARIABLE, raising=False)

    assert record_path(TEMPLATE) == REPO_ROOT / ".imagegen" / "local-stack.json"


def test_a_stack_removes_only_its_own_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path))
    first, second = _record(os.getpid()), _record(os.getppid())
    write_record(first)
    write_record(second)  # a second stack of the same template, started later

    remove_record(first)
    assert StackRecord.from_json(record_path(TEMPLATE).read_text()) == second
    remove_record(second)
    assert not record_path(TEMPLATE).exists()


def test_the_record_of_an_ended_stack_is_not_believed_and_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path))
    write_record(_record(_pid_of_ended_process()))

    with pytest.raises(NoRunningStackError, match="is not running any more"):
        find_running_stack(TEMPLATE)
    assert not record_path(TEMPLATE).exists()


def _pid_of_ended_process() -> int:
    process = subprocess.Popen(["true"])
    process.wait(timeout=10)
    return process.pid


def test_a_stack_whose_endpoint_does_not_answer_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path))
    write_record(_record(os.getpid(), f"http://127.0.0.1:{free_port()}"))

    with pytest.raises(NoRunningStackError, match="does not answer"):
        find_running_stack(TEMPLATE)
    assert record_path(TEMPLATE).exists()  # its process lives: not ours to remove


def test_a_stack_of_another_template_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path))
    write_record(_record(os.getpid()))

    with pytest.raises(NoRunningStackError, match="was built from"):
        find_running_stack(tmp_path / "template.yaml")


# --- The sample names ---------------------------------------------------------------------------


def test_every_sample_name_is_used_by_a_sample_event() -> None:
    texts = [path.read_text() for path in EVENTS_DIR.glob("*.json")]
    # The bus is named by no event today; it is the name the handlers' unit tests give it.
    unused = {
        sample.placeholder
        for sample in SAMPLE_NAMES
        if not any(sample.placeholder in text for text in texts)
    }
    assert unused <= {"imagegen-bus"}


def test_sample_names_are_replaced_wherever_they_occur() -> None:
    names = {
        "imagegen-images-123456789012": "real-bucket",
        "arn:aws:states:us-east-1:123456789012:execution:imagegen:": "arn:x:execution:m-1:",
    }
    event = {
        "bucket": "imagegen-images-123456789012",
        "urls": ["s3://imagegen-images-123456789012/a.png"],
        "input": '{"arn": "arn:aws:states:us-east-1:123456789012:execution:imagegen:job"}',
        "count": 2,
    }

    resolved, used = resolve_sample_names(event, names)

    assert resolved == {
        "bucket": "real-bucket",
        "urls": ["s3://real-bucket/a.png"],
        "input": '{"arn": "arn:x:execution:m-1:job"}',
        "count": 2,
    }
    assert used == names


# --- Against the running stack: every sample event -----------------------------------------------


@pytest.fixture
def running_stack(harness: Harness) -> LocalStack:
    """The shared local stack, recorded as `imagegen local` records it (tests/conftest.py). It
    blocks the sample's term, so that validate_prompt_blocked_term.json is refused."""
    return harness.stack


Check = Callable[[int, Any, DeployedStack], None]
SAMPLE_JOB_ID = json.loads((EVENTS_DIR / "api_get_generate.json").read_text())["pathParameters"][
    "execution_id"
]


def _api(*statuses: int) -> Check:
    def check(code: int, response: Any, stack: DeployedStack) -> None:
        assert code == 0
        assert response["statusCode"] in statuses, response["body"]
        body = json.loads(response["body"])
        if response["statusCode"] in (200, 202) and "execution_id" in body:
            assert body["execution_id"] == SAMPLE_JOB_ID

    return check


def _api_accepts(code: int, response: Any, stack: DeployedStack) -> None:
    assert code == 0
    assert response["statusCode"] == 202, response["body"]


def _plans_the_job(code: int, job: Any, stack: DeployedStack) -> None:
    assert code == 0
    assert job["bucket"] == stack.buckets["ImagesBucket"]  # the stack's, not the sample's
    assert [slot["seed"] for slot in job["images"]] == [42, 43]


def _fails_with(error_type: str) -> Check:
    def check(code: int, payload: Any, stack: DeployedStack) -> None:
        assert code == 1
        assert payload["errorType"] == error_type

    return check


def _stores_the_png(code: int, outcome: Any, stack: DeployedStack) -> None:
    assert code == 0
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    png = s3.get_object(Bucket=stack.buckets["ImagesBucket"], Key=outcome["s3_key"])["Body"].read()
    assert png.startswith(b"\x89PNG")


def _signs_urls(code: int, detail: Any, stack: DeployedStack) -> None:
    assert code == 0
    assert stack.buckets["ImagesBucket"] in detail["images"][0]["url"]
    assert detail["failed_images"][0]["error"]["code"] == "CONTENT_FILTERED"


def _describes(error_code: str) -> Check:
    def check(code: int, detail: Any, stack: DeployedStack) -> None:
        assert code == 0
        assert detail["error"]["code"] == error_code

    return check


def _settles_lost_jobs(code: int, result: Any, stack: DeployedStack) -> None:
    assert code == 0
    assert result == {"batchItemFailures": []}


def _reports_the_ending(code: int, result: Any, stack: DeployedStack) -> None:
    # The sample job either succeeded (its own event was put: nothing owed) or was stopped by
    # the DELETE before (the cancellation is owed).
    assert code == 0
    assert result is None or result["detail_type"] == "Image Generation Cancelled"


def _supersedes_the_progress(code: int, result: Any, stack: DeployedStack) -> None:
    # The sample's job is the one started above; the sample's progress is older ("at" in 2026-11-25)
    # than the record the POST created, and the job has ended: the table keeps what it has.
    assert code == 0
    assert result == {"execution_id": SAMPLE_JOB_ID, "stage": "generating", "applied": False}


def _delivers_to_no_target(code: int, result: Any, stack: DeployedStack) -> None:
    # The sample's job is none of this stack's and the stack has no WebhookUrl: nothing to POST,
    # the message is consumed.
    assert code == 0
    assert result == {"batchItemFailures": []}


def _summarises(metric: str) -> Check:
    def check(code: int, result: Any, stack: DeployedStack) -> None:
        assert code == 0
        assert result["metric_name"] == metric

    return check


# In the order a user would run them: the job that GET, DELETE and the ending read is the one
# api_post_generate_idempotent.json starts (its id follows from its caller and Idempotency-Key).
RUNS: list[tuple[str, Check]] = [
    ("api_get_openapi.json", _api(200)),
    ("api_get_generate.json", _api(404)),  # not started yet: no such job
    ("api_post_generate.json", _api_accepts),
    ("api_post_generate_invalid.json", _api(422)),
    ("api_post_generate_idempotent.json", _api(202)),
    ("api_get_generate.json", _api(200)),
    ("api_delete_generate.json", _api(202, 409)),  # 409 once it has ended
    ("report_job_ending.json", _reports_the_ending),
    ("record_job_progress.json", _supersedes_the_progress),
    ("webhook_delivery.json", _delivers_to_no_target),
    ("validate_prompt.json", _plans_the_job),
    ("validate_prompt_blocked_term.json", _fails_with("InvalidPromptError")),
    ("generate_with_bedrock.json", _stores_the_png),
    ("create_presigned_urls.json", _signs_urls),
    ("create_presigned_urls_throttled.json", _fails_with("ModelThrottledError")),
    ("describe_failure.json", _describes("CONTENT_FILTERED")),
    ("describe_failure_gpu_timeout.json", _describes("TIMEOUT")),
    ("fail_lost_gpu_jobs.json", _settles_lost_jobs),
    ("image_events_subscriber.json", _summarises("ImagesDelivered")),
    ("image_events_subscriber_failed.json", _summarises("FailuresDelivered")),
    ("image_events_subscriber_cancelled.json", _summarises("CancellationsDelivered")),
]


def function_of(event_file: str) -> str:
    """The logical id of the function an event file is for: ``validate_prompt_blocked_term.json``
    belongs to ``functions/validate_prompt``, ValidatePromptFunction."""
    folders = [path.name for path in (REPO_ROOT / "functions").iterdir() if path.is_dir()]
    folder = max((name for name in folders if event_file.startswith(name)), key=len)
    return "".join(part.title() for part in folder.split("_")) + "Function"


def test_every_sample_event_is_run() -> None:
    assert sorted({event_file for event_file, _ in RUNS}) == SAMPLE_EVENTS


def test_every_sample_event_runs_through_invoke_against_the_running_stack(
    running_stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert running_stack.stack is not None
    stack = running_stack.stack
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    for event_file, check in RUNS:
        function = function_of(event_file)
        code = main(["invoke", function, "-e", str(EVENTS_DIR / event_file)])

        out, err = capsys.readouterr()
        assert f"using the local stack at {endpoint} (pid {os.getpid()})" in err, event_file
        assert "deploying" not in err
        try:
            check(code, json.loads(out), stack)
        except AssertionError as error:
            raise AssertionError(f"{event_file} through {function}: {error}\n{err}") from error


def test_the_sample_names_resolve_against_the_running_stack(running_stack: LocalStack) -> None:
    assert running_stack.stack is not None
    names = stack_names(running_stack.stack)

    # every line of the table names a resource the template has
    assert set(names) == {sample.placeholder for sample in SAMPLE_NAMES}
    assert names["imagegen-bus"] == running_stack.stack.event_buses["ImageEventsBus"]


# --- The client -------------------------------------------------------------------------------


def test_generate_against_no_api_says_it_cannot_reach_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    assert main(["generate", "a fox", "--api-url", url]) == 1
    assert f"cannot reach the API at {url}" in capsys.readouterr().err


def test_output_paths() -> None:
    assert output_paths(None, "abc", 1) == [Path("out/imagegen-abc-0.png")]
    assert output_paths(Path("x/fox.png"), "abc", 1) == [Path("x/fox.png")]
    assert output_paths(Path("fox.png"), "abc", 2) == [Path("fox-0.png"), Path("fox-1.png")]


# --- With no AWS configuration at all -----------------------------------------------------------


def test_every_command_against_the_local_stack_works_with_no_aws_configuration(
    harness: Harness, tmp_path: Path
) -> None:
    """A fresh machine: no AWS variables, no ~/.aws. The local stack's commands need none
    (they sign with the local stack's own credentials), as the docs promise."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AWS_") and name not in {"HOME", "BOTO_CONFIG"}
    }
    environment["HOME"] = str(tmp_path)  # no ~/.aws here

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imagegen.cli", *args],
            cwd=REPO_ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    secret = cli("webhook", "secret")
    assert secret.returncode == 0, secret.stderr
    assert secret.stdout.startswith("whsec_")

    # Started, with the secret read, then out of time for deliveries: 124, not a credentials error.
    listen = cli("webhook", "listen", "--port", str(free_port()), "--count", "1", "--timeout", "1")
    assert listen.returncode == 124, listen.stderr
    assert "credentials" not in listen.stderr.lower()

    invoked = cli("invoke", "DescribeFailureFunction", "-e", "events/describe_failure.json")
    assert invoked.returncode == 0, invoked.stderr
    assert "using the local stack" in invoked.stderr

    status = cli("status", "no-such-job", "--api-url", harness.stack.api_url, "--api-key", "k")
    assert status.returncode == 1 and "404" in status.stderr, status.stderr
    # `imagegen webhook rotate-secret` reaches the stack as `secret` does (webhooks._local_secret);
    # it is not run here: rotating the shared stack's key would sign other tests' deliveries
    # with a key their receivers do not have yet.
