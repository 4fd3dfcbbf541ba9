"""How `imagegen generate` shows a job moving on: a rich progress bar on a terminal, plain lines
elsewhere (tests, CI, a pipe).

Both follow ``JobStatus`` as ``GET /generate/{id}`` answers it: "queued (position N)" while the
job waits for a GPU worker, then its steps (GPU) or images (Bedrock) with the percent of the whole
job and the API's ETA, then the later stages, then the download of each image.
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Protocol

from imagegen_common.models import ExecutionStatus, JobStatus, Progress, Stage

if TYPE_CHECKING:  # rich is imported when a bar is drawn: plain output needs none of it
    from rich.console import Console

_WHILE_GENERATING = {
    Stage.GENERATING,
    Stage.STORING,
    Stage.SIGNING,
    Stage.PUBLISHING,
}


def describe(status: JobStatus) -> str:
    """One line for where a job is: 'queued (position 2)', 'generating: step 12/50, 24%, ETA
    8 s', 'signing', 'succeeded'..."""
    if status.status is not ExecutionStatus.RUNNING:
        return (status.stage or status.status).lower()
    stage = status.stage
    if stage is None:
        return "running"
    if stage is Stage.QUEUED:
        return (
            "queued"
            if status.queue_position is None
            else f"queued (position {status.queue_position})"
        )
    if status.progress is not None and stage in _WHILE_GENERATING:
        return f"{stage.value}: {describe_progress(status.progress)}"
    return stage.value


def describe_progress(progress: Progress) -> str:
    unit = "step" if progress.unit == "steps" else "image"
    text = f"{unit} {progress.step}/{progress.steps}, {progress.percent:.0f}%"
    if progress.eta_seconds is not None:
        text += f", ETA {format_seconds(progress.eta_seconds)}"
    return text


def format_seconds(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole} s" if whole < 60 else f"{whole // 60} min {whole % 60:02d} s"


class JobDisplay(Protocol):
    """What `imagegen generate` tells its display."""

    def note(self, text: str) -> None:
        """A line of its own (submitted, wrote ...), above the bar on a terminal."""

    def update(self, status: JobStatus, elapsed_s: float) -> None:
        """The job's status as one poll found it."""

    def download(self, label: str, done_bytes: int, total_bytes: int | None) -> None:
        """Bytes of one image downloaded so far (``label`` names the image)."""

    def close(self) -> None: ...


class PlainJobDisplay:
    """A line per change: what a log or a CI run can keep. Steps are shown as they change (at
    most one line per poll)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout
        self._last = ""
        self._downloads: set[str] = set()

    def note(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def update(self, status: JobStatus, elapsed_s: float) -> None:
        line = describe(status)
        if line != self._last:
            self._last = line
            self.note(f"[{elapsed_s:6.1f}s] {status.status.value} {line}")

    def download(self, label: str, done_bytes: int, total_bytes: int | None) -> None:
        if label not in self._downloads:  # one line per image: the bytes add nothing here
            self._downloads.add(label)
            self.note(f"downloading {label}")

    def close(self) -> None:
        return None


class RichJobDisplay:
    """A live rich progress bar: queue position, then the percent of the job with the API's ETA,
    then one bar per download."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskID,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console or Console(),
            transient=False,
        )
        self._job: TaskID = self._progress.add_task("submitting", total=None, detail="")
        self._files: dict[str, TaskID] = {}
        self._progress.start()

    def note(self, text: str) -> None:
        self._progress.console.print(text, highlight=False, markup=False)

    def update(self, status: JobStatus, elapsed_s: float) -> None:
        progress = status.progress
        if status.status is not ExecutionStatus.RUNNING:
            done = status.status is ExecutionStatus.SUCCEEDED
            self._progress.update(
                self._job,
                description=describe(status),
                total=100,
                completed=100 if done else (progress.percent if progress else 0),
                detail="",
            )
            return
        if status.stage is Stage.QUEUED or progress is None:
            self._progress.update(self._job, description=describe(status), total=None, detail="")
            return
        unit = "step" if progress.unit == "steps" else "image"
        eta = (
            f"ETA {format_seconds(progress.eta_seconds)}"
            if progress.eta_seconds is not None
            else ""
        )
        stage = status.stage.value if status.stage else "running"
        self._progress.update(
            self._job,
            description=f"{stage} {unit} {progress.step}/{progress.steps}",
            total=100,
            completed=progress.percent,
            detail=eta,
        )

    def download(self, label: str, done_bytes: int, total_bytes: int | None) -> None:
        task = self._files.get(label)
        if task is None:
            task = self._progress.add_task(f"downloading {label}", total=total_bytes, detail="")
            self._files[label] = task
        self._progress.update(task, completed=done_bytes, total=total_bytes)

    def refresh(self) -> None:
        """Draw now (the bar otherwise redraws on its own, 10 times a second)."""
        self._progress.refresh()

    def close(self) -> None:
        self._progress.stop()


def job_display(stream: IO[str] | None = None, *, interactive: bool | None = None) -> JobDisplay:
    """The rich bar on a terminal, plain lines otherwise (``interactive`` overrides the check)."""
    target = stream or sys.stdout
    if interactive is None:
        interactive = target.isatty()
    return RichJobDisplay() if interactive else PlainJobDisplay(target)
