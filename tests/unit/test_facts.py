"""Facts that live in one place in the code, and the other files that must agree with them.

- The Bedrock models: ``imagegen_common.bedrock``'s registry. The template's ``ModelId`` and
  ``AllowedModelIds`` defaults must equal it; the settings, the local stand-in and
  ``imagegen models`` read it.
- The result events' detail-types: ``imagegen_common.models.RESULT_EVENT_DETAILS``. Every rule in
  the template that routes result events must use them; every event the workflow emits is one of
  them or a progress event whose detail has only ``ImageGenerationProgressDetail``'s fields.
- The progress events' detail-type: every rule that routes them uses it, and every rule on the
  bus routes one of our detail-types (or Step Functions' status changes).
- The stage ``GET /generate/{id}`` reports: ``STAGE_BY_STATE`` in ``functions/api/executions.py``,
  keyed by the workflow's state names. A state renamed or added in the ASL without a stage would
  report ``stage: null``; docs/progress-and-jobs.md lists them (read here).
- The settings' defaults: a template parameter is the source of every function setting it feeds
  (and, through the ECS application, of the GPU worker's); a default the setting keeps must be
  the parameter's. The k8s ConfigMap sets only what differs from the GPU service's defaults, and
  the GPU queue's visibility timeout is the worker's.
- The timeout chain of a synchronous call: `Prefer: wait` < ApiFunction's Timeout < API
  Gateway's 29 s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings
from samtranslator.yaml_helper import yaml_parse

from gpu_service.settings import Settings as GpuSettings
from imagegen import model_lifecycle
from imagegen.local.api_gateway import INTEGRATION_TIMEOUT_S
from imagegen.local.fake_bedrock import FakeBedrock
from imagegen_common.bedrock import DEFAULT_MODEL_ID, KNOWN_MODEL_IDS
from imagegen_common.models import (
    IMAGE_GENERATION_PROGRESS,
    RESULT_EVENT_DETAILS,
    ImageGenerationProgressDetail,
    Stage,
)
from imagegen_common.settings import (
    ApiSettings,
    EventsSettings,
    GenerationSettings,
    ImagesSettings,
    JobsSettings,
    WebhookDeliverySettings,
)
from tests.conftest import import_function

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_BY_STATE = import_function("api", "executions").STAGE_BY_STATE


def documented_stages_without_a_record() -> set[str]:
    """The stages docs/progress-and-jobs.md lists for a running job the jobs table has no record
    of (its sentence "... reports the stage of the workflow's state instead: `a`, `b` ...")."""
    text = (REPO_ROOT / "docs" / "progress-and-jobs.md").read_text()
    sentence = text.split("reports the stage of the workflow's state instead:", 1)[1]
    sentence = sentence.split(".", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", sentence))


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


def progress_event_patterns() -> dict[str, dict[str, Any]]:
    """Every EventBridge pattern of the template that routes progress events, by resource."""
    resources = template()["Resources"]
    recorder = resources["RecordJobProgressFunction"]["Properties"]["Events"]
    return {
        "RecordJobProgressFunction": recorder["ProgressEvents"]["Properties"]["Pattern"],
        "WebhookProgressRule": resources["WebhookProgressRule"]["Properties"]["EventPattern"],
    }


def every_event_pattern() -> dict[str, dict[str, Any]]:
    """Every pattern on the stack's bus (the rules' and the functions' EventBridgeRule events)."""
    patterns = {}
    for name, resource in template()["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Events::Rule":
            patterns[name] = properties["EventPattern"]
        for event_name, event in (properties.get("Events") or {}).items():
            if event.get("Type") == "EventBridgeRule":
                patterns[f"{name}.{event_name}"] = event["Properties"]["Pattern"]
    return patterns


@pytest.mark.parametrize("resource", sorted(progress_event_patterns()))
def test_progress_rules_match_the_progress_detail_type_from_our_source(resource: str) -> None:
    pattern = progress_event_patterns()[resource]
    assert pattern["detail-type"] == [IMAGE_GENERATION_PROGRESS]
    assert pattern["source"] == [{"Ref": "EventSource"}]


def test_every_rule_on_the_bus_routes_results_progress_or_step_functions() -> None:
    """A rule for a detail-type of ours that is neither list would route nothing we emit."""
    ours = set(RESULT_EVENT_DETAILS) | {IMAGE_GENERATION_PROGRESS}
    for name, pattern in every_event_pattern().items():
        detail_types = set(pattern.get("detail-type", []))
        if pattern.get("source") == ["aws.states"]:
            assert detail_types == {"Step Functions Execution Status Change"}, name
        else:
            assert detail_types and detail_types <= ours, (name, detail_types - ours)
    routed = {
        detail_type
        for pattern in every_event_pattern().values()
        for detail_type in pattern.get("detail-type", [])
    }
    assert ours <= routed  # each of our events goes somewhere


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
    documented = documented_stages_without_a_record()
    assert documented, "the docs no longer list the stages of a job without a record"
    assert set(STAGE_BY_STATE.values()) == documented
    assert documented <= {stage.value for stage in Stage}


# --- Settings and the template parameters that feed them -------------------------------------


def _parameter_behind(value: Any) -> str | None:
    """The template parameter a function variable's value is: ``!Ref P`` or
    ``!Join [",", !Ref P]`` (a CommaDelimitedList); None for anything else."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return str(value["Ref"])
    if isinstance(value, dict) and "Fn::Join" in value:
        delimiter, parts = value["Fn::Join"]
        if delimiter == "," and isinstance(parts, dict) and set(parts) == {"Ref"}:
            return str(parts["Ref"])
    return None


def fed_settings() -> list[tuple[str, str]]:
    """(VARIABLE, Parameter) of every function variable the template sets from a parameter."""
    resources = template()["Resources"]
    blocks = [template()["Globals"]["Function"]["Environment"]["Variables"]]
    for resource in resources.values():
        if resource["Type"] == "AWS::Serverless::Function":
            blocks.append(resource["Properties"].get("Environment", {}).get("Variables", {}))
    parameters = template()["Parameters"]
    fed = {
        (variable, parameter)
        for block in blocks
        for variable, value in block.items()
        if (parameter := _parameter_behind(value)) in parameters
    }
    return sorted(fed)


LAMBDA_SETTINGS = [
    ApiSettings,
    WebhookDeliverySettings,
    GenerationSettings,
    ImagesSettings,
    EventsSettings,
    JobsSettings,
]


def _setting_read_from(
    cls: type[BaseSettings], name: str, text: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """What ``cls`` makes of ``text`` in its variable ``name``."""
    others = {
        field: "x"
        for field, info in cls.model_fields.items()
        if info.is_required() and field != name
    }
    monkeypatch.setenv(name.upper(), text)
    return getattr(cls(**others), name)


def test_the_template_feeds_settings_from_parameters() -> None:
    assert len(fed_settings()) >= 20  # the check below reads something


@pytest.mark.parametrize(("variable", "parameter"), fed_settings())
def test_a_setting_with_a_default_has_its_parameters_default(
    variable: str, parameter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The template parameter is the source of a setting's value on AWS; a default the setting
    keeps (for tests and the local stack) must be the same value, read as the setting reads it."""
    default = template()["Parameters"][parameter].get("Default")
    for cls in LAMBDA_SETTINGS:
        field = cls.model_fields.get(variable.lower())
        if field is None or field.is_required() or default is None:
            continue
        own = field.get_default(call_default_factory=True)
        if own is None:  # "unset" (e.g. Bedrock in the function's own region): no default value
            continue
        text = ",".join(default) if isinstance(default, list) else str(default)
        assert _setting_read_from(cls, variable.lower(), text, monkeypatch) == own, (
            f"{cls.__name__}.{variable.lower()} defaults to {own!r}; template.yaml's "
            f"{parameter} to {default!r}"
        )


def gpu_task_settings() -> list[tuple[str, str]]:
    """(VARIABLE, root Parameter) of the ECS GPU worker's environment fed from template.yaml's
    parameters through the nested application's parameters."""
    ecs = yaml_parse((REPO_ROOT / "gpu_service" / "ecs" / "template.yaml").read_text())
    passed = template()["Resources"]["GpuService"]["Properties"]["Parameters"]
    found = []
    for resource in ecs["Resources"].values():
        if resource["Type"] != "AWS::ECS::TaskDefinition":
            continue
        for container in resource["Properties"]["ContainerDefinitions"]:
            for entry in container.get("Environment", []):
                nested = _parameter_behind(entry["Value"])
                root = _parameter_behind(passed.get(nested)) if nested else None
                if root in template()["Parameters"]:
                    found.append((entry["Name"], root))
    return sorted(found)


def test_the_gpu_workers_defaults_are_the_template_parameters_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fed = gpu_task_settings()
    assert ("GPU_PRICE_PER_HOUR_USD", "GpuPricePerHourUsd") in fed
    for variable, parameter in fed:
        field = GpuSettings.model_fields.get(variable.lower())
        default = template()["Parameters"][parameter].get("Default")
        if field is None or field.is_required() or default is None:
            continue
        monkeypatch.setenv(variable, str(default))
        assert getattr(GpuSettings(), variable.lower()) == field.get_default(
            call_default_factory=True
        ), f"gpu_service Settings.{variable.lower()} against template.yaml's {parameter}"


def test_the_gpu_queues_visibility_timeout_is_the_workers() -> None:
    """The worker gives each message it takes, and renews, its own VISIBILITY_TIMEOUT_SECONDS;
    the queue's is what a message gets before that, and what a dead worker's jobs wait."""
    queue = template()["Resources"]["GpuJobQueue"]["Properties"]
    default = GpuSettings.model_fields["visibility_timeout_seconds"].default
    assert queue["VisibilityTimeout"] == default


def test_the_configmap_sets_only_what_differs_from_the_gpu_services_defaults() -> None:
    configmap = yaml_parse((REPO_ROOT / "gpu_service" / "k8s" / "configmap.yaml").read_text())
    restated = []
    for variable, text in configmap["data"].items():
        field = GpuSettings.model_fields.get(variable.lower())
        if field is None or field.is_required():
            continue
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(variable, str(text))
            if getattr(GpuSettings(), variable.lower()) == field.get_default(
                call_default_factory=True
            ):
                restated.append(variable)
    assert restated == [], "the ConfigMap restates the defaults of gpu_service/settings.py"


# --- The timeout chain of a synchronous call ----------------------------------------------------


def test_the_wait_fits_the_function_which_fits_the_gateway() -> None:
    """`Prefer: wait` holds a POST; the function must answer within its Timeout, and API Gateway
    ends the integration at 29 s (the local gateway's INTEGRATION_TIMEOUT_S, AWS's default)."""
    prefer = import_function("api", "prefer")
    function_timeout = template()["Resources"]["ApiFunction"]["Properties"]["Timeout"]
    assert function_timeout >= prefer.MAX_WAIT_SECONDS + prefer.ANSWER_MARGIN_SECONDS
    assert function_timeout < INTEGRATION_TIMEOUT_S == 29


# --- docs/template.md ------------------------------------------------------------------------


def documented_parameters() -> list[tuple[list[str], list[str]]]:
    """docs/template.md's parameter table: each row's parameters, with the backticked values of
    its default cell ("empty" is '')."""
    text = (REPO_ROOT / "docs" / "template.md").read_text()
    table = text.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        if line.startswith("| `"):
            names, default = line.split("|")[1:3]
            values = re.findall(r"`([^`]*)`", default) or ([""] if "empty" in default else [])
            rows.append((re.findall(r"`([A-Za-z0-9]+)`", names), values))
    return rows


def test_the_template_reference_lists_every_parameter_and_no_other() -> None:
    documented = [name for names, _ in documented_parameters() for name in names]
    assert sorted(documented) == sorted(template()["Parameters"])


def test_a_documented_default_of_one_parameter_is_the_templates() -> None:
    checked = 0
    for names, values in documented_parameters():
        if len(names) != 1 or len(values) != 1:
            continue
        default = template()["Parameters"][names[0]].get("Default")
        if default is not None and not isinstance(default, list):
            assert values[0] == str(default), f"docs/template.md gives {names[0]} {values[0]!r}"
            checked += 1
    assert checked >= 15
