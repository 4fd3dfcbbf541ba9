"""The model lifecycle report against the local Bedrock stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from imagegen import model_lifecycle
from imagegen.local.fake_bedrock import FakeBedrock
from imagegen.model_lifecycle import ModelLifecycle, check_models, format_report
from imagegen_common.bedrock import SD35_LARGE, STABLE_IMAGE_CORE, TITAN_IMAGE_V2


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock() as server:
        yield server


@pytest.fixture
def control(fake: FakeBedrock) -> Any:
    return boto3.client("bedrock", region_name="us-east-1", endpoint_url=fake.endpoint_url)


def test_check_models_reads_status(control: Any) -> None:
    results = check_models(control, [STABLE_IMAGE_CORE, TITAN_IMAGE_V2, "stability.nope-v1:0"])
    assert [(r.model_id, r.status) for r in results] == [
        (STABLE_IMAGE_CORE, "ACTIVE"),
        (TITAN_IMAGE_V2, "LEGACY"),
        ("stability.nope-v1:0", None),
    ]
    assert results[2].error is not None
    assert "ResourceNotFoundException" in results[2].error
    assert results[0].model_name == "Stable Image Core 1.1"


def test_report_warns_for_legacy_and_unknown(control: Any, fake: FakeBedrock) -> None:
    fake.set_lifecycle(SD35_LARGE, "LEGACY")
    report = format_report(check_models(control, [STABLE_IMAGE_CORE, SD35_LARGE, "x.y-v1:0"]))
    lines = report.splitlines()
    assert lines[0].startswith("OK")
    assert STABLE_IMAGE_CORE in lines[0]
    assert lines[1].startswith("WARNING")
    assert SD35_LARGE in lines[1]
    assert "LEGACY" in lines[1]
    assert lines[2].startswith("WARNING")
    assert "could not be looked up" in lines[2]
    assert lines[-1] == "3 model(s) checked, 2 warning(s)"


def test_format_report_without_warnings() -> None:
    report = format_report([ModelLifecycle(STABLE_IMAGE_CORE, "ACTIVE")])
    assert "WARNING" not in report
    assert report.endswith("1 model(s) checked, 0 warning(s)")


def test_main_reads_allowed_model_ids(
    fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", fake.endpoint_url)
    monkeypatch.setenv("ALLOWED_MODEL_IDS", f"{STABLE_IMAGE_CORE}, {SD35_LARGE}")
    assert model_lifecycle.main(["--region", "us-west-2"]) == 0
    out = capsys.readouterr().out
    assert STABLE_IMAGE_CORE in out
    assert SD35_LARGE in out
    assert "0 warning(s)" in out

    assert model_lifecycle.main(["--model-id", TITAN_IMAGE_V2]) == 1
    out = capsys.readouterr().out
    assert "WARNING" in out
    assert TITAN_IMAGE_V2 in out
    assert STABLE_IMAGE_CORE not in out
