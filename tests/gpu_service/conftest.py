"""Fixtures of the GPU service suite: the tiny random-weight model (its images are noise)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpu_service.engine import Engine
from gpu_service.settings import Settings
from gpu_service.tiny_model import ensure_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def gpu_state_definition(queue_url: str) -> str:
    """A state machine of one state: the workflow's own "Generate on GPU", sending to ``queue_url``.

    Taken from statemachine/generate_image.asl.json, so the worker is tested against the message
    and the heartbeat the deployed workflow really uses.
    """
    workflow = json.loads((REPO_ROOT / "statemachine" / "generate_image.asl.json").read_text())
    state = dict(workflow["States"]["Generate on GPU"])
    state.pop("Catch", None)
    state.pop("Next", None)
    state["End"] = True
    state["Parameters"] = {**state["Parameters"], "QueueUrl": queue_url}
    return json.dumps({"StartAt": "Generate on GPU", "States": {"Generate on GPU": state}})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline, saved with save_pretrained into a session temporary directory."""
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _settings(model_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: CPU, the tiny model, small images, no warm-up unless asked."""
    values: dict[str, Any] = {
        "model_id": str(model_dir),
        "device": "cpu",
        "dtype": "float32",
        "default_width": 64,
        "default_height": 64,
        "default_steps": 2,
        "default_guidance": 0.0,
        "warmup": False,
        "max_batch": 4,
        "batch_wait_ms": 10,
        "max_queue": 16,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def make_settings(tiny_model_dir: Path) -> Callable[..., Settings]:
    """``make_settings(**overrides)``: test settings on the tiny model."""
    return lambda **overrides: _settings(tiny_model_dir, **overrides)


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    """One loaded tiny engine shared by the suite (loading is from_pretrained, as in production)."""
    engine = Engine.load(_settings(tiny_model_dir))
    yield engine
    engine.close()
