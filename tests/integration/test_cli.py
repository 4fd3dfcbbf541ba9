"""`imagegen invoke`, and the client's behaviour when things go wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen.cli import main
from imagegen.client import output_paths
from imagegen.local.moto_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    return subprocess.run(
        [sys.executable, "-m", "imagegen.cli", *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_invoke_runs_a_function_of_the_template_with_a_sample_event() -> None:
    result = run_cli("invoke", "ValidatePromptFunction", "-e", "events/validate_prompt.json")

    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert job["backend"] in {"bedrock", "gpu"}
    # the bucket comes from the stack the template created, not from the sample event
    assert job["bucket"].startswith("imagegen-local-imagesbucket-")


def test_invoke_reports_the_handler_error_and_fails() -> None:
    result = run_cli(
        "invoke", "ValidatePromptFunction", "-e", "events/validate_prompt_blocked_term.json",
        "--parameter-overrides", "BlockedPromptTerms=forbidden-thing",
    )  # fmt: skip

    assert result.returncode == 1
    assert json.loads(result.stdout)["errorType"] == "InvalidPromptError"


def test_invoke_names_the_functions_when_the_id_is_unknown() -> None:
    result = run_cli("invoke", "NoSuchFunction", "-e", "events/validate_prompt.json")

    assert result.returncode == 2
    assert "ValidatePromptFunction" in result.stderr


def test_generate_against_no_api_says_it_cannot_reach_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    assert main(["generate", "a fox", "--api-url", url]) == 1
    assert f"cannot reach the API at {url}" in capsys.readouterr().err


def test_output_paths() -> None:
    assert output_paths(None, "abc", 1) == [Path("imagegen-abc-0.png")]
    assert output_paths(Path("x/fox.png"), "abc", 1) == [Path("x/fox.png")]
    assert output_paths(Path("fox.png"), "abc", 2) == [Path("fox-0.png"), Path("fox-1.png")]
