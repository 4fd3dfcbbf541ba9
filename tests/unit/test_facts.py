"""Facts that live in one place in the code, and the other files that must agree with them.

- The Bedrock models: ``imagegen_common.bedrock``'s registry. The template's ``ModelId`` and
  ``AllowedModelIds`` defaults must equal it; the settings, the local stand-in and
  ``imagegen models`` read it.
- The result events' detail-types: ``imagegen_common.models.RESULT_EVENT_DETAILS``. Every rule in
  the template that routes result events must use them; every event the workflow emits is one of
  them or a progress event whose detail has only ``ImageGenerationProgressDetail``'s fields.
- The stage ``GET /generate/{id}`` reports: ``STAGE_BY_STATE`` in ``functions/api/executions.py``,
  keyed by the workflow's state names. A state renamed or added in the ASL without a stage would
  report ``stage: null``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from samtranslator.yaml_helper import yaml_parse

from imagegen import model_lifecycle
from imagegen.local.fake_bedrock import FakeBedrock
from imagegen_common.bedrock import DEFAULT_MODEL_ID, KNOWN_MODEL_IDS
from imagegen_common.models import (
    IMAGE_GENERATION_PROGRESS,
    RESULT_EVENT_DETAILS,
    ImageGenerationProgressDetail,
    Stage,
)
from imagegen_common.settings import GenerationSettings
from tests.conftest import import_function

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_BY_STATE = import_function("api", "executions").STAGE_BY_STATE

# The stages the README documents for a running job the jobs table has no record of.
DOCUMENTED_STAGES = {"queued", "validating", "generating", "signing", "publishing", "failing"}


@cache
def template() -> dict[str, Any]:
    return yaml_parse((REPO_ROOT / "template.yaml").read_text())


@cache
def workflow() -> dict[str, Any]:
    return json.loads((REPO_ROOT / "statemachine" / "generate_image.asl.json").read_text())


def states_of(machine: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every state of a machine, with those of its Map and Parallel states' inner machines."""
    for name, state in machine["States"].items():
        yield name, state
        for inner in (
            state.get("ItemProcessor"),
            state.get("Iterator"),
            *state.get("Branches", []),
        ):
            if inner is not None:
                yield from states_of(inner)


# --- Bedrock models ------------------------------------------------------------------------


def test_template_model_defaults_are_the_registry() -> None:
    parameters = template()["Parameters"]
    assert parameters["AllowedModelIds"]["Default"].split(",") == list(KNOWN_MODEL_IDS), (
        "template.yaml's AllowedModelIds default must list imagegen_common.bedrock's registry"
    )
    assert parameters["ModelId"]["Default"] == DEFAULT_MODEL_ID


def test_settings_defaults_are_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLOWED_MODEL_IDS", raising=False)
    monkeypatch.delenv("DEFAULT_MODEL_ID", raising=False)
    settings = GenerationSettings(images_bucket="images")
    assert settings.allowed_model_ids == list(KNOWN_MODEL_IDS)
    assert settings.default_model_id == DEFAULT_MODEL_ID


def test_stand_in_and_lifecycle_check_use_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(FakeBedrock().lifecycle) == set(KNOWN_MODEL_IDS)
    monkeypatch.delenv("ALLOWED_MODEL_IDS", raising=False)
    assert model_lifecycle._model_ids_from_env() == list(KNOWN_MODEL_IDS)


# --- Result events -------------------------------------------------------------------------


def result_event_patterns() -> dict[str, dict[str, Any]]:
    """Every EventBridge pattern of the template that routes result events, by resource."""
    resources = template()["Resources"]
    subscriber = resources["ImageEventsSubscriberFunction"]["Properties"]["Events"]
    return {
        "ImageEventsSubscriberFunction": subscriber["ResultEvents"]["Properties"]["Pattern"],
        "ResultEventsRule": resources["ResultEventsRule"]["Properties"]["EventPattern"],
        "WebhookRule": resources["WebhookRule"]["Properties"]["EventPattern"],
    }


@pytest.mark.parametrize("resource", sorted(result_event_patterns()))
def test_result_event_rules_match_every_detail_type(resource: str) -> None:
    pattern = result_event_patterns()[resource]
    assert sorted(pattern["detail-type"]) == sorted(RESULT_EVENT_DETAILS), (
        f"{resource}'s detail-type list must be imagegen_common.models.RESULT_EVENT_DETAILS"
    )


def emitted_entries() -> list[dict[str, Any]]:
    return [
        entry
        for _, state in states_of(workflow())
        if state.get("Resource") == "arn:aws:states:::events:putEvents"
        for entry in state["Parameters"]["Entries"]
    ]


def test_workflow_emits_only_result_and_progress_detail_types() -> None:
    emitted = {entry["DetailType"] for entry in emitted_entries()}
    assert emitted & set(RESULT_EVENT_DETAILS)
    assert emitted <= set(RESULT_EVENT_DETAILS) | {IMAGE_GENERATION_PROGRESS}


def test_progress_the_workflow_emits_has_the_models_fields() -> None:
    details = [
        entry["Detail"]
        for entry in emitted_entries()
        if entry["DetailType"] == IMAGE_GENERATION_PROGRESS
    ]
    assert details
    fields = set(ImageGenerationProgressDetail.model_fields)
    required = {
        name for name, f in ImageGenerationProgressDetail.model_fields.items() if f.is_required()
    }
    for detail in details:
        names = {key.removesuffix(".$") for key in detail}
        assert names <= fields, names - fields
        assert required <= names, required - names
        assert Stage(detail["stage"])


# --- Stages --------------------------------------------------------------------------------


def test_every_workflow_state_has_a_stage() -> None:
    names = [name for name, _ in states_of(workflow())]
    missing = [name for name in names if name not in STAGE_BY_STATE]
    assert not missing, f"states without a stage in executions.STAGE_BY_STATE: {missing}"


def test_every_stage_names_a_workflow_state() -> None:
    names = {name for name, _ in states_of(workflow())}
    unknown = sorted(set(STAGE_BY_STATE) - names)
    assert not unknown, f"STAGE_BY_STATE names states the workflow does not have: {unknown}"


def test_stages_are_the_documented_ones() -> None:
    assert set(STAGE_BY_STATE.values()) == DOCUMENTED_STAGES
