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
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegen.local.running_stack import (
    STATE_DIR_VARIABLE,
    StackRecord,
    remove_record,
    write_record,
)
from imagegen.local.stack import LocalStack, LocalStackOptions

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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # `make run`'s stack (imagegen local --allow-loopback-webhooks), on a free port, recorded as
    # `imagegen local` records it (`imagegen webhook listen` reads its secret through the record),
    # in a folder of its own: a `make run` of this checkout is never the one found.
    options = LocalStackOptions(api_port=0, allow_loopback_webhooks=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STATE_DIR_VARIABLE, str(tmp_path_factory.mktemp("state")))
        with LocalStack(options, say=lambda line: None) as started:
            record = StackRecord.now(
                aws_endpoint_url=started.endpoint_url,
                api_url=started.api_url,
                stack_name=started.options.stack_name,
                region=started.options.region,
                template=started.options.template,
            )
            write_record(record)
            try:
                yield started
            finally:
                remove_record(record)


EXAMPLES = runnable_examples(README.read_text())


@pytest.mark.parametrize(
    "script", [script for _, script in EXAMPLES], ids=[f"README.md:{n}" for n, _ in EXAMPLES]
)
def test_readme_example_runs_as_written(stack: LocalStack, script: str) -> None:
    # Only the port differs from `make run`'s.
    adapted = script.replace(MAKE_RUN_URL, stack.api_url)
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
