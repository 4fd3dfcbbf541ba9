"""Reading the GPU job queue's messages: what a body holds, and whether its job can run.

Nothing a message contains can stop the worker: each body is parsed on its own with pydantic's
JSON parser (jiter, in Rust: bounded nesting, bounded numbers, no recursion in Python) and never
raises. A body that is not a ``GpuJobMessage`` still yields its ``task_token`` when one can be
read safely, so that the task can be failed with ``INVALID_JOB``; one without a token cannot be
answered (the worker leaves it for the dead-letter queue).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field, ValidationError

from imagegen_common.models import GpuJobMessage, Job

MAX_BODY_CHARACTERS = 1_048_576
"""SQS's own limit on a message body (1 MiB): anything longer did not come from the queue."""
_S3_KEY_BYTES = 1024
LOGGED_CHARACTERS = 160
"""Of a message body or a problem, in a log line."""
_LISTED_PROBLEMS = 10  # validation problems named in a cause


@dataclass(frozen=True)
class ParsedBody:
    """What could be read from a message body: the job message, or its token and what is wrong.

    ``token`` is set whenever one could be extracted safely; ``problem`` whenever the body is not
    a valid ``GpuJobMessage``.
    """

    envelope: GpuJobMessage | None
    token: str | None
    problem: str | None


class _TaskTokenOnly(BaseModel):
    """Reads only the token from a body whose job is bad (other fields are ignored)."""

    task_token: str = Field(min_length=1)


def parse_body(body: object) -> ParsedBody:
    """Parse a message body without raising, whatever it holds (any size, depth, type, encoding).

    pydantic's JSON parser is used rather than ``json.loads``: nesting deeper than its limit (200)
    and integers longer than Python's digit limit are reported as invalid JSON instead of raising
    ``RecursionError`` or ``ValueError`` in the middle of the worker's loop.
    """
    if not isinstance(body, str | bytes):
        return ParsedBody(None, None, f"the body is a {type(body).__name__}, not text")
    if len(body) > MAX_BODY_CHARACTERS:
        return ParsedBody(None, None, f"the body is longer than {MAX_BODY_CHARACTERS} characters")
    try:
        envelope = GpuJobMessage.model_validate_json(body)
    except ValidationError as error:
        problem = _summarise(error)
    except (ValueError, RecursionError) as error:  # not expected from pydantic; never fatal
        return ParsedBody(None, None, f"unreadable body: {type(error).__name__}")
    else:
        if not envelope.task_token:
            return ParsedBody(None, None, "invalid GPU job message: task_token is empty")
        return ParsedBody(envelope, envelope.task_token, None)
    try:
        token: str | None = _TaskTokenOnly.model_validate_json(body).task_token
    except (ValueError, RecursionError):  # ValidationError is a ValueError
        token = None
    return ParsedBody(None, token, problem)


def problem_with(
    job: Job, max_pixels: int, default_bucket: str | None, max_steps: int = 150
) -> str | None:
    """Why the worker cannot run ``job`` (its ``INVALID_JOB`` cause), or None."""
    if job.controls.steps is not None and job.controls.steps > max_steps:
        return f"job.controls.steps is {job.controls.steps}; this worker runs at most {max_steps}"
    if job.width is None or job.height is None:
        return "job.width and job.height must be set"
    for name, value in (("width", job.width), ("height", job.height)):
        if not 64 <= value <= 2048 or value % 8:
            return f"job.{name} must be a multiple of 8 from 64 to 2048, got {value}"
    if job.width * job.height > max_pixels:
        return f"job.width x job.height exceeds {max_pixels} pixels"
    if not job.images:
        return "job.images is empty"
    if len({slot.index for slot in job.images}) != len(job.images):
        return "job.images has repeated indexes"
    for slot in job.images:
        if not 1 <= len(slot.s3_key.encode("utf-8", "surrogatepass")) <= _S3_KEY_BYTES:
            return f"job.images[{slot.index}].s3_key must be 1 to {_S3_KEY_BYTES} bytes"
    if not (job.bucket or default_bucket):
        return "job.bucket is null and the worker has no IMAGES_BUCKET"
    return None


def short(text: str, limit: int = LOGGED_CHARACTERS) -> str:
    """``text`` cut to ``limit`` characters for a log line, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def preview(body: object) -> str:
    """A log-safe glimpse of a body: its start, escaped, and its length when cut."""
    if not isinstance(body, str | bytes):
        return f"<{type(body).__name__}>"
    shown = repr(body[:LOGGED_CHARACTERS])
    return shown if len(body) <= LOGGED_CHARACTERS else f"{shown}... ({len(body)} characters)"


def _summarise(error: ValidationError) -> str:
    problems = error.errors(include_url=False, include_input=False)
    named = [
        f"{'.'.join(short(str(part), 60) for part in item['loc']) or 'body'}: "
        f"{short(item['msg'], 200)}"
        for item in problems[:_LISTED_PROBLEMS]
    ]
    more = len(problems) - len(named)
    return "invalid GPU job message: " + "; ".join(named) + (f"; and {more} more" if more else "")
