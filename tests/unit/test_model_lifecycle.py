"""The model lifecycle report against the local Bedrock stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from imagegen import model_lifecycle
from imagegen.local.fake_bedrock import FakeBedrock
from imagegen.model_lifecycle import ModelLifecycle, check_models, format_report
from imagegen_common.bedrock import KNOWN_MODEL_IDS, SD35_LARGE, STABLE_IMAGE_CORE

# Past its end of life (2026-06-30): Bedrock no longer knows it.
ENDED_MODEL = "amazon.titan-image-generator-v2:0"


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock() as server:
        yield server


@pytest.fixture
def control(fake: FakeBedrock) -> Any:
    return boto3.client("bedrock", region_name="us-east-1", endpoint_url=fake.endpoint_url)


def test_check_models_reads_status_and_dates(control: Any, fake: FakeBedrock) -> None:
    legacy, end = datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 6, 1, tzinfo=UTC)
    fake.set_lifecycle(SD35_LARGE, "LEGACY", legacy_time=legacy, end_of_life_time=end)
    results = check_models(control, [STABLE_IMAGE_CORE, SD35_LARGE, ENDED_MODEL])
    assert [(r.model_id, r.status) for r in results] == [
        (STABLE_IMAGE_CORE, "ACTIVE"),
        (SD35_LARGE, "LEGACY"),
        (ENDED_MODEL, None),
    ]
    assert results[0].model_name == "Stable Image Core 1.1"
    assert (results[1].legacy_since, results[1].end_of_life) == (legacy, end)
    assert results[2].error is not None
    assert "ResourceNotFoundException" in results[2].error


def test_report_warns_for_legacy_and_unknown(control: Any, fake: FakeBedrock) -> None:
    fake.set_lifecycle(
        SD35_LARGE,
        "LEGACY",
        legacy_time=datetime(2026, 12, 1, tzinfo=UTC),
        end_of_life_time=datetime(2027, 6, 1, tzinfo=UTC),
    )
    report = format_report(check_models(control, [STABLE_IMAGE_CORE, SD35_LARGE, "x.y-v1:0"]))
    lines = report.splitlines()
    assert lines[0].startswith("OK")
    assert STABLE_IMAGE_CORE in lines[0]
    assert lines[1].startswith("WARNING")
    assert SD35_LARGE in lines[1]
    assert "LEGACY since 2026-12-01; end of life 2027-06-01" in lines[1]
    assert lines[2].startswith("WARNING")
    assert "could not be looked up" in lines[2]
    assert lines[-1] == "3 model(s) checked, 2 warning(s)"


def test_format_report_without_warnings() -> None:
    report = format_report([ModelLifecycle(STABLE_IMAGE_CORE, "ACTIVE")])
    assert "WARNING" not in report
    assert report.endswith("1 model(s) checked, 0 warning(s)")


def test_main_checks_the_registry_by_default(
    fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", fake.endpoint_url)
    monkeypatch.delenv("ALLOWED_MODEL_IDS", raising=False)
    assert model_lifecycle.main(["--region", "us-west-2"]) == 0
    out = capsys.readouterr().out
    for model_id in KNOWN_MODEL_IDS:
        assert f"OK      {model_id}" in out
    assert f"{len(KNOWN_MODEL_IDS)} model(s) checked, 0 warning(s)" in out


def test_main_reads_allowed_model_ids(
    fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", fake.endpoint_url)
    monkeypatch.setenv("ALLOWED_MODEL_IDS", f"{STABLE_IMAGE_CORE}, {SD35_LARGE}")
    assert model_lifecycle.main(["--region", "us-west-2"]) == 0
    out = capsys.readouterr().out
    assert STABLE_IMAGE_CORE in out
    assert SD35_LARGE in out
    assert "2 model(s) checked, 0 warning(s)" in out

    fake.set_lifecycle(STABLE_IMAGE_CORE, "LEGACY")
    assert model_lifecycle.main([]) == 1
    assert f"WARNING {STABLE_IMAGE_CORE}" in capsys.readouterr().out

    assert model_lifecycle.main(["--model-id", ENDED_MODEL]) == 1
    out = capsys.readouterr().out
    assert f"WARNING {ENDED_MODEL}: could not be looked up" in out
    assert SD35_LARGE not in out
