"""The record of a running local stack, with which `imagegen invoke` finds and reads that stack.

`imagegen local` and `imagegen demo` write it once their stack is up and remove it when they stop,
at ``.imagegen/local-stack.json`` in the template's folder (``$IMAGEGEN_STATE_DIR/local-stack.json``
when that variable is set)::

    {
      "pid": 4242,
      "aws_endpoint_url": "http://127.0.0.1:40123",
      "api_url": "http://127.0.0.1:3000",
      "stack_name": "imagegen-local",
      "region": "us-east-1",
      "template": "/home/me/imagegen/template.yaml",
      "started_at": "2026-11-29T12:00:00+00:00"
    }

It sits next to the template because the stack runs that checkout's code: `imagegen invoke` in
another checkout must not find it, and no variable (``XDG_RUNTIME_DIR`` is often unset) decides
where it is. ``aws_endpoint_url`` is moto's server, usable by any AWS client
(``AWS_ENDPOINT_URL=$(jq -r .aws_endpoint_url .imagegen/local-stack.json) aws s3 ls``).

A record is believed only while its process is alive and its endpoint answers for its stack: an
`imagegen local` that was killed leaves its record behind, and the next look removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from imagegen.local.deploy import DeployedStack, describe_stack, translate_template

RECORD_NAME = "local-stack.json"
STATE_DIR_VARIABLE = "IMAGEGEN_STATE_DIR"
ANSWER_TIMEOUT_S = 5.0
"""How long a running stack's endpoint may take to answer before it counts as not running."""
LOCAL_STACK_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
"""What a client of the local stack signs with: moto wants a signature, never a real account's,
so the CLI works on a machine with no AWS configuration at all."""


def local_stack_session(record: StackRecord) -> boto3.session.Session:
    """A boto3 session for the local stack of ``record``: its region, the local credentials
    (whatever the environment or ~/.aws holds)."""
    return boto3.session.Session(region_name=record.region, **LOCAL_STACK_CREDENTIALS)


@dataclass(frozen=True)
class StackRecord:
    """What `imagegen local` writes about its stack."""

    pid: int
    aws_endpoint_url: str
    api_url: str
    stack_name: str
    region: str
    template: Path
    started_at: str

    @classmethod
    def now(
        cls,
        *,
        aws_endpoint_url: str,
        api_url: str,
        stack_name: str,
        region: str,
        template: Path,
    ) -> StackRecord:
        """The record of a stack this process has just started."""
        return cls(
            pid=os.getpid(),
            aws_endpoint_url=aws_endpoint_url,
            api_url=api_url,
            stack_name=stack_name,
            region=region,
            template=template.resolve(),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "template": str(self.template)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StackRecord:
        """The record in ``text``; ValueError when it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            return cls(
                pid=int(data["pid"]),
                aws_endpoint_url=str(data["aws_endpoint_url"]),
                api_url=str(data["api_url"]),
                stack_name=str(data["stack_name"]),
                region=str(data["region"]),
                template=Path(data["template"]),
                started_at=str(data["started_at"]),
            )
        except KeyError as error:
            raise ValueError(f"no {error.args[0]!r}") from error


class NoRunningStackError(Exception):
    """No usable running stack; the message says why (no record, or what is wrong with it)."""


def record_path(template: Path) -> Path:
    """Where the record of the stack built from ``template`` is."""
    state_dir = os.environ.get(STATE_DIR_VARIABLE)
    folder = Path(state_dir) if state_dir else template.resolve().parent / ".imagegen"
    return folder / RECORD_NAME


def write_record(record: StackRecord) -> Path:
    """Write ``record`` where `imagegen invoke` looks for it (replacing any); its path."""
    path = record_path(record.template)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{record.pid}")
    partial.write_text(record.to_json())
    partial.replace(path)  # whole or not at all, for a reader at the same moment
    return path


def remove_record(record: StackRecord) -> None:
    """Remove ``record``'s file, unless another stack has written its own there since."""
    path = record_path(record.template)
    with contextlib.suppress(OSError, ValueError):
        if StackRecord.from_json(path.read_text()).pid == record.pid:
            path.unlink()


def find_running_stack(template: Path) -> StackRecord:
    """The record of the running local stack built from ``template``.

    NoRunningStackError when there is none: no record, an unreadable one, one whose process has
    ended (that record is removed), whose endpoint does not answer for its stack, or one built
    from another template.
    """
    path = record_path(template)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NoRunningStackError(
            f"no local stack is running (`imagegen local` starts one; none is recorded in {path})"
        ) from None
    except OSError as error:
        raise NoRunningStackError(f"cannot read {path}: {error}") from error
    try:
        record = StackRecord.from_json(text)
    except ValueError as error:
        raise NoRunningStackError(f"{path} is not a stack record ({error})") from error
    if not _process_alive(record.pid):
        with contextlib.suppress(OSError):
            path.unlink()
        raise NoRunningStackError(
            f"the local stack recorded in {path} (pid {record.pid}) is not running any more "
            "(its record is removed)"
        )
    if record.template != template.resolve():
        raise NoRunningStackError(
            f"the local stack at {record.aws_endpoint_url} (pid {record.pid}) was built from "
            f"{record.template}, not {template.resolve()}"
        )
    try:
        status = (
            _client(record, "cloudformation")
            .describe_stacks(StackName=record.stack_name)["Stacks"][0]
            .get("StackStatus")
        )
    except Exception as error:
        raise NoRunningStackError(
            f"the local stack recorded in {path} (pid {record.pid}) does not answer at "
            f"{record.aws_endpoint_url}: {error}"
        ) from error
    if status != "CREATE_COMPLETE":
        raise NoRunningStackError(
            f"stack {record.stack_name} at {record.aws_endpoint_url} is {status}, not ready"
        )
    return record


def read_stack(record: StackRecord) -> DeployedStack:
    """The running stack's resources and functions, read through its CloudFormation.

    The template gives what CloudFormation does not keep (each function's local code folder,
    the API's routes); everything else (physical names, each function's environment) comes from
    the stack. The template is not adjusted for moto as ``deploy_stack`` adjusts it: that changes
    nothing read here, and would import moto (seconds).
    """
    artifact_bucket = f"{record.stack_name}-artifacts".lower()
    cfn, local_code = translate_template(
        record.template, region=record.region, artifact_bucket=artifact_bucket
    )
    return describe_stack(
        _client(record, "cloudformation"),
        record.stack_name,
        cfn,
        local_code,
        template_path=record.template,
        region=record.region,
        lambda_client=_client(record, "lambda"),
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _client(record: StackRecord, service: str) -> Any:
    return local_stack_session(record).client(
        service,
        endpoint_url=record.aws_endpoint_url,
        config=Config(
            connect_timeout=ANSWER_TIMEOUT_S,
            read_timeout=ANSWER_TIMEOUT_S,
            retries={"max_attempts": 1},
        ),
    )
