"""The resource names in the sample events, and the names of a stack they stand for.

The files in ``events/`` serve ``sam local invoke -e``, the handlers' unit tests
(``tests/unit/test_sample_events.py`` creates resources with exactly these names) and
``imagegen invoke``. None of them can know a stack's physical names, which CloudFormation makes up
(``imagegen-local-imagesbucket-1qwr3mudqtit``), so they use the fixed placeholders of
``SAMPLE_NAMES`` instead, and ``imagegen invoke`` puts the stack's own names in their place before
it runs a function. This table is the one place that says which placeholder stands for which
resource of the template; a sample naming another resource adds its line here.

A placeholder is replaced wherever it occurs in a string of the event: as a whole value
(``"bucket"``), inside a URL or an ``s3://`` URI, or inside JSON carried as a string (an SQS
record's ``body``, an execution's ``input``). The placeholders are distinctive enough for that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from imagegen.local.deploy import DeployedStack

SampleForm = Literal[
    "bucket", "state machine ARN", "execution ARN prefix", "queue ARN", "event bus"
]


@dataclass(frozen=True)
class SampleName:
    """One placeholder of the sample events and the stack's resource it stands for."""

    placeholder: str
    logical_id: str
    """The template's resource."""
    form: SampleForm
    """Which of the resource's names the placeholder is."""


SAMPLE_NAMES: tuple[SampleName, ...] = (
    SampleName("imagegen-images-123456789012", "ImagesBucket", "bucket"),
    SampleName(
        "arn:aws:states:us-east-1:123456789012:stateMachine:imagegen",
        "StateMachine",
        "state machine ARN",
    ),
    # An execution's ARN is its machine's with ":execution:" and its name appended; the name
    # (the sample job's id) stays as the sample has it.
    SampleName(
        "arn:aws:states:us-east-1:123456789012:execution:imagegen:",
        "StateMachine",
        "execution ARN prefix",
    ),
    SampleName(
        "arn:aws:sqs:us-east-1:123456789012:imagegen-GpuJobDeadLetterQueue-ABC123",
        "GpuJobDeadLetterQueue",
        "queue ARN",
    ),
    SampleName("imagegen-bus", "ImageEventsBus", "event bus"),
)


def stack_names(stack: DeployedStack) -> dict[str, str]:
    """Placeholder -> the stack's name, for each line of ``SAMPLE_NAMES`` the stack has."""
    names: dict[str, str] = {}
    for sample in SAMPLE_NAMES:
        name = _stack_name(stack, sample)
        if name is not None:
            names[sample.placeholder] = name
    return names


def _stack_name(stack: DeployedStack, sample: SampleName) -> str | None:
    if sample.form == "bucket":
        return stack.buckets.get(sample.logical_id)
    if sample.form == "event bus":
        return stack.event_buses.get(sample.logical_id)
    if sample.form == "queue ARN":
        url = stack.queues.get(sample.logical_id)
        if url is None:
            return None
        account, _, queue_name = urlsplit(url).path.strip("/").partition("/")
        return f"arn:aws:sqs:{stack.region}:{account}:{queue_name}"
    machine_arn = stack.state_machines.get(sample.logical_id)
    if machine_arn is None:
        return None
    if sample.form == "state machine ARN":
        return machine_arn
    return machine_arn.replace(":stateMachine:", ":execution:", 1) + ":"


def resolve_sample_names(event: Any, names: Mapping[str, str]) -> tuple[Any, dict[str, str]]:
    """``event`` with each placeholder of ``names`` replaced by its name, and the replacements
    made (placeholder -> name)."""
    # Longest first, so that no placeholder is cut by a shorter one it contains.
    ordered = sorted(names.items(), key=lambda item: len(item[0]), reverse=True)
    used: dict[str, str] = {}

    def resolve(node: Any) -> Any:
        if isinstance(node, str):
            for placeholder, name in ordered:
                if placeholder in node and placeholder != name:
                    node = node.replace(placeholder, name)
                    used[placeholder] = name
            return node
        if isinstance(node, dict):
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(event), used
