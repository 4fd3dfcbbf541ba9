"""Fixtures of the workflow suite: moto open in this process through the local stack's one door
(``imagegen.local.moto_aws.local_aws``), where the tests deploy templates and run executions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imagegen.local.moto_aws import LocalAws, local_aws


@pytest.fixture
def aws() -> Iterator[LocalAws]:
    """moto in this process, with the local stack's config and work-arounds (undone after)."""
    with local_aws() as aws:
        yield aws
