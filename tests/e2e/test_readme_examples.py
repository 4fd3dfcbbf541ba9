"""The docs' curl examples run, exactly as written, against the local stack of `make run`.

A ``bash`` block right under the line ``<!-- example: make run -->``, in the README or any page of
the manual (``DOCUMENTS``), is a promise that it works as written against `make run`'s stack. Each
such block runs here, in order, each in its own bash with ``set -euo pipefail``, against the shared
local stack, which offers what `make run` offers (GPU jobs by default, loopback webhooks) and more;
the only change made to the text is the port (`make run` listens on 3000, the test on a free one).
A block fails the test when any command in it fails: the examples use ``jq -e`` where the reader is
told what to expect, so a changed answer fails too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.local_stack_harness import Harness

REPOSITORY = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [
        REPOSITORY / "README.md",
        *(REPOSITORY / "docs").glob("*.md"),
        REPOSITORY / "gpu_service" / "README.md",
        REPOSITORY / "web" / "README.md",
    ]
)
MARKER = "<!-- example: make run -->"
MAKE_RUN_URL = "http://127.0.0.1:3000"
BLOCK_TIMEOUT_S = 120


def runnable_examples(document: Path) -> list[tuple[str, str]]:
    """(where, script) of every bash block that follows the marker line in ``document``."""
    lines = document.read_text().splitlines()
    name = document.relative_to(REPOSITORY)
    examples: list[tuple[str, str]] = []
    for number, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        start = number + 1
        assert lines[start].strip() == "```bash", f"{name}:{start + 1}: no bash block"
        end = lines.index("```", start + 1)
        examples.append((f"{name}:{start + 1}", "\n".join(lines[start + 1 : end])))
    return examples


EXAMPLES = [example for document in DOCUMENTS for example in runnable_examples(document)]


def test_the_docs_mark_their_runnable_examples() -> None:
    assert len(EXAMPLES) >= 7
    assert runnable_examples(REPOSITORY / "README.md"), "the README's example is not marked"
    for where, script in EXAMPLES:
        assert MAKE_RUN_URL in script or "$API" in script, f"{where} calls nothing"


@pytest.mark.parametrize(
    "script", [script for _, script in EXAMPLES], ids=[where for where, _ in EXAMPLES]
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
