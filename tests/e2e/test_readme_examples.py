"""The README's curl examples run, exactly as written, against the local stack of `make run`.

A ``bash`` block right under the line ``<!-- example: make run -->`` is a promise that it works as
written against `make run`'s stack. Each such block runs here, in order, each in its own bash with
``set -euo pipefail``, against one local stack started with `make run`'s options; the only change
made to the text is the port (`make run` listens on 3000, the test on a free one). A block fails
the test when any command in it fails: the examples use ``jq -e`` where the reader is told what
to expect, so a changed answer fails too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.local_stack_harness import Harness

REPOSITORY = Path(__file__).resolve().parents[2]
README = REPOSITORY / "README.md"
MARKER = "<!-- example: make run -->"
MAKE_RUN_URL = "http://127.0.0.1:3000"
BLOCK_TIMEOUT_S = 120


def runnable_examples(text: str) -> list[tuple[int, str]]:
    """(line number, script) of every bash block that follows the marker line."""
    lines = text.splitlines()
    examples: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        start = number + 1
        assert lines[start].strip() == "```bash", f"README.md:{start + 1}: no bash block"
        end = lines.index("```", start + 1)
        examples.append((start + 1, "\n".join(lines[start + 1 : end])))
    return examples


def test_the_readme_marks_its_runnable_examples() -> None:
    examples = runnable_examples(README.read_text())
    assert len(examples) >= 3
    for line, script in examples:
        assert MAKE_RUN_URL in script or "$API" in script, f"README.md:{line} calls nothing"


EXAMPLES = runnable_examples(README.read_text())


@pytest.mark.parametrize(
    "script", [script for _, script in EXAMPLES], ids=[f"README.md:{n}" for n, _ in EXAMPLES]
)
def test_readme_example_runs_as_written(harness: Harness, script: str) -> None:
    # Only the port differs from `make run`'s.
    adapted = script.replace(MAKE_RUN_URL, harness.stack.api_url)
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    completed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", adapted],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, (
        f"exit {completed.returncode}\n--- script\n{adapted}\n--- stdout\n{completed.stdout}"
        f"\n--- stderr\n{completed.stderr}"
    )
