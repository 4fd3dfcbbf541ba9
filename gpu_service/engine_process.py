"""The engine in a process of its own, so that the worker's I/O never slows the accelerator.

The worker's stages beside the engine (receiving, parsing, boto3's signing and parsing for every
S3, SQS and Step Functions call, the progress events) are Python, and one interpreter runs one
thread of Python at a time. In one process the engine's thread must win the GIL back after
every operator it dispatches, and a call that takes 286 ms alone took 397 ms beside the worker's
threads (tiny model, 4 steps, 20 ms per AWS call; ``scripts/measure_worker_path.py``). vLLM runs
its engine core in a process of its own for the same reason. Here the engine process loads the
model and makes images; the worker's process holds the queue and the jobs and never imports
torch.

The two talk over one ``multiprocessing`` pipe, one call at a time, as the worker calls its
engine: the worker sends a batch of ``ImageSpec``; the engine process answers with a message
per denoising step (only when the worker observes them) and then the images, or the exception
the call raised. A dead engine process (killed, out of memory, a driver fault) closes the pipe:
the call in hand raises ``EngineProcessLost``, and the worker stops (its orchestrator starts
another) rather than fail jobs that another worker can make.

    engine = EngineProcess.start(settings)   # loads and warms up; raises if that fails
    images = engine.generate_images(specs, on_step)
    engine.close()
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from gpu_service.image_specs import DenoisingStep, ImageSpec, StepObserver
from gpu_service.settings import Settings

logger = logging.getLogger(__name__)

_READY, _FAILED, _STEP, _IMAGES, _ERROR = "ready", "failed", "step", "images", "error"
_PARENT_WATCH_SECONDS = 0.5


class EngineProcessLost(RuntimeError):
    """The engine process has exited: no call can be made on it any more."""


class EngineProcessFailedToStart(RuntimeError):
    """The engine process could not load the model (its traceback is the message)."""


class EngineProcess:
    """An ``Engine`` in a child process, called as one: ``generate_images(specs, on_step)``."""

    def __init__(self, process: BaseProcess, connection: Connection) -> None:
        self._process = process
        self._connection = connection
        self._lock = threading.Lock()  # one call at a time, as on the engine's own thread

    @classmethod
    def start(cls, settings: Settings) -> EngineProcess:
        """Start the process, load the model there and warm it up (``settings.warmup``); returns
        once it is ready. ``spawn``: the child starts clean (CUDA cannot be forked)."""
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=serve_engine,
            args=(settings.model_dump(), theirs),
            name="engine",
            daemon=True,  # never outlives the worker
        )
        process.start()
        theirs.close()  # the child's end: once the child exits, our reads end with EOFError
        try:
            kind, detail = ours.recv()
        except EOFError:
            process.join(timeout=5)
            raise EngineProcessFailedToStart(
                f"the engine process exited while loading (exit code {process.exitcode})"
            ) from None
        if kind != _READY:
            process.join(timeout=30)
            raise EngineProcessFailedToStart(str(detail))
        logger.info("engine process %s ready: %s", process.pid, detail)
        return cls(process, ours)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def generate_images(
        self, specs: Sequence[ImageSpec], on_step: StepObserver | None = None
    ) -> list[Any]:
        """PIL images for each spec, in order, from one pipeline call in the engine process.
        ``on_step`` runs here, in the caller's thread, for each step the engine reports; what it
        raises is logged and the call goes on."""
        if not specs:
            return []
        with self._lock:
            try:
                self._connection.send((list(specs), on_step is not None))
                while True:
                    kind, detail = self._connection.recv()
                    if kind == _STEP:
                        _observe(on_step, detail)
                    elif kind == _IMAGES:
                        return list(detail)
                    else:
                        raise detail
            except (EOFError, BrokenPipeError, ConnectionResetError) as error:
                self._process.join(timeout=5)
                raise EngineProcessLost(
                    f"the engine process {self._process.pid} exited (exit code "
                    f"{self._process.exitcode})"
                ) from error

    def close(self, timeout: float = 30.0) -> None:
        """Ask the process to stop after the call in hand, then make sure it has."""
        with self._lock:
            with contextlib.suppress(OSError):  # already gone
                self._connection.send(None)
            self._process.join(timeout)
            if self._process.is_alive():
                logger.warning("engine process %s did not stop; killing it", self._process.pid)
                self._process.kill()
                self._process.join(5)
            self._connection.close()


def _observe(on_step: StepObserver | None, step: DenoisingStep) -> None:
    if on_step is None:
        return
    try:
        on_step(step)
    except Exception:
        logger.exception("a step observer failed; generation goes on")


def serve_engine(settings_fields: dict[str, Any], connection: Connection) -> None:
    """The engine process: load the engine, then make each batch the pipe brings until ``None``,
    or until the worker has gone (the pipe closes, or the worker's process is no longer this
    one's parent: a killed worker takes its engine with it, and the GPU's memory)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The worker decides when the engine stops (it drains on SIGTERM, and Ctrl-C in a terminal
    # signals the whole process group): the signals are the worker's alone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(
        target=_exit_with, args=(os.getppid(),), name="parent-watch", daemon=True
    ).start()
    # torch is imported here, in the engine process only.
    from gpu_service.engine import Engine, load_ready_engine

    engine: Engine | None = None
    try:
        try:
            engine = load_ready_engine(Settings.model_validate(settings_fields))
        except Exception:
            connection.send((_FAILED, traceback.format_exc()))
            return
        connection.send((_READY, f"{engine.model_id} on {engine.device} as {engine.dtype}"))
        while (request := connection.recv()) is not None:
            specs, observed = request

            def report_step(step: DenoisingStep) -> None:
                connection.send((_STEP, step))

            try:
                images = engine.generate_images(specs, report_step if observed else None)
            except Exception as error:  # the call's failure is the worker's to handle
                connection.send((_ERROR, _picklable(error)))
                continue
            connection.send((_IMAGES, images))
    except (EOFError, OSError):
        return  # the worker has gone
    finally:
        if engine is not None:
            engine.close()
        connection.close()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_WATCH_SECONDS)
    os._exit(1)  # orphaned mid-call: nobody will read the images


def _picklable(error: Exception) -> Exception:
    """``error`` itself when it crosses a pipe unchanged, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes, just made)
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
