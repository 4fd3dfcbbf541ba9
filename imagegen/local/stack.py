"""The whole system on 127.0.0.1: `imagegen local`, `imagegen demo` and the measurement script.

``LocalStack.start()`` brings up:
- moto's server (S3, SQS, EventBridge, Step Functions executing our ASL, ...) on ``moto_port``,
  in this process, through ``moto_aws.local_aws(server=True)``;
- the stack built from template.yaml (``deploy.deploy_stack``), its Lambda functions running in
  execution environments that are child processes (``lambda_runtime.ProcessLambdaRuntime``);
- the API on ``api_port`` (``api_gateway``, uvicorn), handing API Gateway proxy events to
  ApiFunction;
- ``gpu_workers`` GPU workers, each its own process (`python -m gpu_service.worker`, see
  ``gpu_worker_process``), consuming the GPU job queue; more can be started, and any stopped or
  killed, while the stack runs;
- the Bedrock stand-in (``fake_bedrock``), only when asked for;
- a subscriber polling the result-events queue, reporting each event to ``on_event``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import boto3

from imagegen.local.api_gateway import ApiLimits, LocalApiGateway, LocalApiServer
from imagegen.local.deploy import DeployedStack, deploy_stack
from imagegen.local.gpu_worker_process import (
    GpuWorkerProcess,
    WorkerExitedError,
    progress_environment,
)
from imagegen.local.lambda_runtime import (
    DEFAULT_MAX_ENVIRONMENTS,
    Invocation,
    ProcessLambdaRuntime,
)
from imagegen.local.moto_aws import LocalAws, local_aws
from imagegen.local.moto_server import ensure_port_free

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
DEFAULT_API_PORT = 3000
GPU_QUEUE_ID = "GpuJobQueue"
RESULT_QUEUE_ID = "ResultEventsQueue"
API_FUNCTION_ID = "ApiFunction"
LOOPBACK_WEBHOOK_FUNCTIONS = (API_FUNCTION_ID, "WebhookDeliveryFunction")
"""The functions that check webhook URLs (SSRF guard): --allow-loopback-webhooks sets theirs."""
TINY_MODEL_NAME = "tiny-random-sd"
"""How GET /models names the tiny random-weight model the local workers run by default."""
WORKER_READY_TIMEOUT_S = 600.0
"""A real model can take minutes to load; the tiny one takes seconds."""

BedrockMode = Literal["fake", "aws"]


_RECEIVE_MAX = 10
"""Messages per receive of the result-event subscriber (SQS's most)."""


class ModelLoadError(RuntimeError):
    """The GPU worker's model could not be loaded."""


@dataclass
class LocalStackOptions:
    template: Path = DEFAULT_TEMPLATE
    host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    """0: a free port (``LocalStack.api_url`` says which)."""
    moto_port: int | None = None
    """None: a free port."""
    bedrock: BedrockMode = "aws"
    """fake: the local Bedrock stand-in; aws: Bedrock itself (needs credentials and network)."""
    gpu_workers: int = 1
    """GPU worker processes started with the stack (0: none, e.g. to test scaling from zero)."""
    model_id: str | None = None
    """The GPU workers' model: MODEL_ID, else the tiny random-weight model (built if missing)."""
    worker_environment: dict[str, str] = field(default_factory=dict)
    """Variables for the GPU workers on top of the stack's (e.g. VISIBILITY_TIMEOUT_SECONDS)."""
    parameters: dict[str, str] = field(default_factory=dict)
    function_environment: dict[str, str] = field(default_factory=dict)
    """Variables every function gets under its own (e.g. POWERTOOLS_METRICS_DISABLED)."""
    function_concurrency: int = DEFAULT_MAX_ENVIRONMENTS
    """Execution environments per function at most; further invocations wait for one."""
    api_limits: ApiLimits = field(default_factory=ApiLimits)
    """API Gateway's body limit and timeouts (shortened in tests)."""
    allow_loopback_webhooks: bool = False
    """WEBHOOK_ALLOW_LOOPBACK=true for the API and webhook delivery functions: webhooks to
    127.0.0.1 (plain http allowed there) for local receivers. Never in a template."""
    stack_name: str = "imagegen-local"
    region: str = "us-east-1"


@dataclass
class EngineTimes:
    """Seconds the workers' engines spent generating, as the workers log each pipeline call."""

    calls: list[tuple[float, float]] = field(default_factory=list)
    """(started at, seconds), the start in ``time.perf_counter()`` terms (when the line came,
    less the seconds it reports)."""

    def record(self, received_at: float, seconds: float) -> None:
        self.calls.append((received_at - seconds, seconds))

    def seconds_between(self, start: float, end: float) -> float:
        return sum(seconds for at, seconds in self.calls if start <= at <= end)


class LocalStack:
    """Everything `imagegen local` runs; ``start()`` then ``stop()`` (or use ``with``).

    One at a time in a process: moto's backends, the Lambda dispatch table and the AWS variables
    of ``os.environ`` are process-wide, so a second stack would share (and on stop, reset) the
    first one's resources.
    """

    _running: LocalStack | None = None
    _running_lock = threading.Lock()

    def __init__(
        self,
        options: LocalStackOptions | None = None,
        *,
        say: Callable[[str], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.options = options or LocalStackOptions()
        self.say = say or logger.info
        self.on_event = on_event
        self.stack: DeployedStack | None = None
        self.engine_times = EngineTimes()
        self.events: list[dict[str, Any]] = []
        self.event_received_at: dict[str, float] = {}
        """execution id -> ``time.perf_counter()`` when its result event was received."""
        self._event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._events_drained = threading.Condition()
        self._drained_since = float("-inf")
        """``time.monotonic()`` when the last receive that found the result queue drained began."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._aws: LocalAws | None = None
        self._moto = contextlib.ExitStack()
        """Closes moto (``local_aws``): its server, backends, config and patches."""
        self._api: LocalApiServer | None = None
        self._runtime: ProcessLambdaRuntime | None = None
        self._bedrock: Any = None
        self._model_id: str | None = None
        self._workers: list[GpuWorkerProcess] = []
        self._workers_started = 0
        self._workers_lock = threading.Lock()
        self._work_dir: Path | None = None
        self._saved_environment: dict[str, str | None] = {}

    # --- Start ----------------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str | None:
        """The moto server's URL (AWS_ENDPOINT_URL for clients of this stack), once started."""
        return self._aws.endpoint_url if self._aws is not None else None

    @property
    def api_url(self) -> str:
        port = self._api.port if self._api is not None else self.options.api_port
        return f"http://{self.options.host}:{port}"

    def start(self) -> LocalStack:
        with LocalStack._running_lock:
            if LocalStack._running is not None:
                raise RuntimeError(
                    "another LocalStack is running in this process; stop it first (moto's "
                    "backends are process-wide: two stacks would share and reset each other's)"
                )
            LocalStack._running = self
        try:
            return self._start()
        except BaseException:
            self._release_process()
            raise

    def _start(self) -> LocalStack:
        options = self.options
        if options.api_port:
            ensure_port_free(options.host, options.api_port, "the API")
        if options.moto_port is not None:
            ensure_port_free(options.host, options.moto_port, "the moto server")
        if options.gpu_workers:
            self._model_id = self._resolve_model()  # fails early, before anything is listening
        try:
            self._start_services()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_services(self) -> None:
        options = self.options
        self._work_dir = Path(tempfile.mkdtemp(prefix="imagegen-local-"))
        self._aws = self._moto.enter_context(
            local_aws(server=True, host=options.host, port=options.moto_port)
        )
        endpoint = self._aws.endpoint_url
        assert endpoint is not None
        environment = {"AWS_ENDPOINT_URL": endpoint}
        if options.bedrock == "fake":
            from imagegen.local.fake_bedrock import FakeBedrock

            self._bedrock = FakeBedrock(options.host, 0, region=options.region).start()
            environment["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = self._bedrock.endpoint_url
            environment["AWS_ENDPOINT_URL_BEDROCK"] = self._bedrock.endpoint_url
        else:
            # Bedrock itself: the boto3 default endpoint of the client's region, not moto.
            region = options.parameters.get("BedrockRegion") or _template_default(
                options.template, "BedrockRegion", options.region
            )
            for service in ("bedrock-runtime", "bedrock"):
                name = "AWS_ENDPOINT_URL_" + service.upper().replace("-", "_")
                environment[name] = f"https://{service}.{region}.amazonaws.com"
        self._set_environment(
            {
                "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
                "AWS_DEFAULT_REGION": options.region,
                "AWS_REGION": options.region,
                **environment,
            }
        )
        parameters = dict(options.parameters)
        if options.bedrock != "fake" and "DefaultBackend" in _template_parameters(options.template):
            # Offline, Bedrock does not answer: jobs that name no backend go to the GPU worker.
            parameters.setdefault("DefaultBackend", "gpu")
        started = time.perf_counter()
        self._runtime = ProcessLambdaRuntime(
            {**options.function_environment, **environment},
            max_environments=options.function_concurrency,
            log=self.say,
            function_overrides=self._function_overrides(),
        )
        self.stack = deploy_stack(
            options.template,
            parameters=parameters,
            stack_name=options.stack_name,
            region=options.region,
            endpoint_url=endpoint,
            runtime=self._runtime,
        )
        self.say(
            f"stack {self.stack.stack_name} created from {options.template} "
            f"in {time.perf_counter() - started:.1f} s"
            + (f" (parameters: {_format(parameters)})" if parameters else "")
        )
        self._start_subscriber()
        if options.gpu_workers:
            starting = [self._spawn_worker() for _ in range(options.gpu_workers)]
            for worker in starting:
                self._wait_until_ready(worker)
        self._api = LocalApiServer(
            LocalApiGateway(self.stack, self._runtime),
            port=options.api_port,
            host=options.host,
            log=lambda line: self.say(f"[api] {line}"),
            limits=options.api_limits,
        ).start()
        self._describe(endpoint)

    def _function_overrides(self) -> dict[str, dict[str, str]]:
        """What only the local stack sets on its functions: loopback webhooks when asked for,
        and the model its GPU workers really run, which GET /models names."""
        overrides: dict[str, dict[str, str]] = {
            logical_id: {"WEBHOOK_ALLOW_LOOPBACK": "true"}
            for logical_id in LOOPBACK_WEBHOOK_FUNCTIONS
            if self.options.allow_loopback_webhooks
        }
        model = self.options.model_id or os.environ.get("MODEL_ID") or TINY_MODEL_NAME
        overrides.setdefault(API_FUNCTION_ID, {})["GPU_MODEL_ID"] = model
        return overrides

    def _set_environment(self, variables: Mapping[str, str]) -> None:
        for name, value in variables.items():
            self._saved_environment.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _resolve_model(self) -> str:
        """The workers' model: --model-id, MODEL_ID, else the tiny model (built if missing)."""
        model_id = self.options.model_id or os.environ.get("MODEL_ID")
        if not model_id:
            from gpu_service.tiny_model import ensure_tiny_model

            self.say("GPU worker: building/using the tiny random-weight model (images are noise)")
            try:
                return str(ensure_tiny_model())
            except Exception as error:
                raise ModelLoadError(
                    f"the GPU worker cannot load model 'tiny': building it failed: "
                    f"{type(error).__name__}: {error}"
                ) from error
        local = Path(model_id).expanduser()
        if (local.is_absolute() or model_id.startswith((".", "~"))) and not local.exists():
            raise ModelLoadError(
                f"the GPU worker cannot load model {model_id!r}: no such directory. "
                + _MODEL_ADVICE
            )
        return model_id

    def _worker_environment(self) -> dict[str, str]:
        """What a task definition would give the worker, for this stack."""
        assert self.stack is not None and self._model_id is not None
        environment = dict(os.environ)  # the stack's endpoint, region and credentials included
        for name, value in {
            # Offline, and without the libraries' progress bars in the stack's output.
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "DIFFUSERS_VERBOSITY": "error",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
            "TQDM_DISABLE": "1",  # diffusers' "Loading pipeline components" bar
        }.items():
            environment.setdefault(name, value)
        environment.update(
            {
                "GPU_QUEUE_URL": self.stack.queues[GPU_QUEUE_ID],
                "IMAGES_BUCKET": self.stack.only("buckets"),
                "MODEL_ID": self._model_id,
                "RECEIVE_WAIT_SECONDS": "1",  # a quick exit on Ctrl-C
                "BATCH_WAIT_MS": "0",
                "WARMUP": "false",
                # The engine process on one core: on a small machine the other one serves the
                # stack itself (its API, functions and moto), which a burst of submissions needs
                # while the workers make images.
                "TORCH_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
                # Its progress events go where the functions' events go.
                **progress_environment(f.environment for f in self.stack.functions.values()),
            }
        )
        environment.update(self.options.worker_environment)
        return environment

    def _spawn_worker(self, environment: Mapping[str, str] | None = None) -> GpuWorkerProcess:
        assert self._work_dir is not None
        with self._workers_lock:
            self._workers_started += 1
            name = f"gpu-worker-{self._workers_started}"
        worker = GpuWorkerProcess(
            name,
            {**self._worker_environment(), **(environment or {})},
            self._work_dir / f"{name}.alive",
            say=self.say,
            on_engine_time=self.engine_times.record,
        )
        with self._workers_lock:
            self._workers.append(worker)
        return worker

    def _wait_until_ready(self, worker: GpuWorkerProcess) -> None:
        try:
            worker.wait_until_ready(WORKER_READY_TIMEOUT_S)
        except (WorkerExitedError, TimeoutError) as error:
            raise ModelLoadError(
                f"the GPU worker cannot load model {self._model_id!r} (or cannot start): "
                f"{error}\n" + _MODEL_ADVICE
            ) from error
        self.say(f"{worker.name} (pid {worker.pid}) ready: model {self._model_id}")

    # --- GPU workers while the stack runs ---------------------------------------------------

    @property
    def workers(self) -> list[GpuWorkerProcess]:
        """The GPU workers started and not stopped or killed through the stack (one that
        crashed on its own is still listed: see its ``alive``)."""
        with self._workers_lock:
            return list(self._workers)

    def start_worker(self, environment: Mapping[str, str] | None = None) -> GpuWorkerProcess:
        """Start one more GPU worker and return once it polls the queue (ModelLoadError if not).

        ``environment`` goes over the stack's ``worker_environment`` for this worker alone
        (another task definition revision, say: a smaller MAX_BATCH).
        """
        if self.stack is None:
            raise RuntimeError("the stack is not started")
        if self._model_id is None:
            self._model_id = self._resolve_model()
        worker = self._spawn_worker(environment)
        try:
            self._wait_until_ready(worker)
        except BaseException:
            self._forget(worker)
            worker.kill()
            raise
        return worker

    def stop_worker(self, worker: GpuWorkerProcess, timeout_s: float = 30.0) -> int:
        """Stop a worker as ECS or Kubernetes does (SIGTERM, SIGKILL after ``timeout_s``)."""
        self._forget(worker)
        return worker.stop(timeout_s)

    def kill_worker(self, worker: GpuWorkerProcess) -> int:
        """Kill a worker at once (SIGKILL), mid-batch if it is working."""
        self._forget(worker)
        return worker.kill()

    # --- Functions while the stack runs -------------------------------------------------------

    def add_invocation_listener(self, listener: Callable[[Invocation], None]) -> None:
        """Call ``listener`` after each invocation of any of the stack's functions returns."""
        if self._runtime is None:
            raise RuntimeError("the stack is not started")
        self._runtime.add_invocation_listener(listener)

    def remove_invocation_listener(self, listener: Callable[[Invocation], None]) -> None:
        if self._runtime is not None:
            self._runtime.remove_invocation_listener(listener)

    @contextlib.contextmanager
    def function_environment(self, logical_id: str, **variables: str) -> Iterator[None]:
        """Run a function with these variables over its own for the block, as an operator's
        ``aws lambda update-function-configuration`` would (a new configuration: new execution
        environments), then as before. For a setting a test varies on one running stack."""
        if self._runtime is None or self.stack is None:
            raise RuntimeError("the stack is not started")
        if logical_id not in self.stack.functions:
            raise KeyError(f"no function {logical_id} in the stack")
        runtime = self._runtime
        before = dict(runtime.function_overrides.get(logical_id, {}))
        runtime.set_function_overrides(logical_id, {**before, **variables})
        try:
            yield
        finally:
            runtime.set_function_overrides(logical_id, before)

    def _forget(self, worker: GpuWorkerProcess) -> None:
        with self._workers_lock:
            if worker in self._workers:
                self._workers.remove(worker)

    def _start_subscriber(self) -> None:
        assert self.stack is not None
        queue_url = self.stack.queues.get(RESULT_QUEUE_ID)
        if queue_url is None:
            self.say(f"no {RESULT_QUEUE_ID} in the template: result events are not printed")
            return
        self._spawn("event-subscriber", self._poll_events, queue_url)

    def _poll_events(self, queue_url: str) -> None:
        sqs = boto3.client("sqs")
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                messages = sqs.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=_RECEIVE_MAX, WaitTimeSeconds=1
                ).get("Messages", [])
            except Exception:
                if self._stop.is_set():
                    return
                logger.exception("polling %s failed", queue_url)
                self._stop.wait(1)
                continue
            for message in messages:
                event = json.loads(message["Body"])
                execution_id = (event.get("detail") or {}).get("execution_id")
                self.event_received_at.setdefault(str(execution_id), time.perf_counter())
                self.events.append(event)
                for listener in [self.on_event, *self._event_listeners]:
                    if listener is not None:
                        listener(event)
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            if len(messages) < _RECEIVE_MAX:  # every visible message came: the queue is drained
                with self._events_drained:
                    self._drained_since = began
                    self._events_drained.notify_all()

    def wait_until_events_received(self, put_before: float, timeout_s: float = 30.0) -> bool:
        """Whether every result event put on the bus before ``put_before`` (``time.monotonic()``)
        has been received, waiting up to ``timeout_s``: the signal is a receive that began after
        that moment and found the queue drained (each message before it had been handled, and
        EventBridge had put each event in the queue before ``put_events`` returned)."""
        with self._events_drained:
            return self._events_drained.wait_for(
                lambda: self._drained_since >= put_before, timeout_s
            )

    def wait_for_event(self, execution_id: str, timeout_s: float = 120.0) -> dict[str, Any] | None:
        """The first result event of ``execution_id`` (already received or still to come)."""
        arrived = threading.Event()
        found: list[dict[str, Any]] = []

        def listener(event: dict[str, Any]) -> None:
            if (event.get("detail") or {}).get("execution_id") == execution_id:
                found.append(event)
                arrived.set()

        self._event_listeners.append(listener)
        try:
            for event in list(self.events):
                listener(event)
            arrived.wait(timeout_s)
        finally:
            self._event_listeners.remove(listener)
        return found[0] if found else None

    def _spawn(self, name: str, target: Callable[..., Any], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _describe(self, endpoint: str) -> None:
        assert self.stack is not None
        stack = self.stack
        lines = [f"moto server (AWS services)  {endpoint}"]
        for route in stack.routes:
            lines.append(
                f"API {route.method:<7} {self.api_url}{route.resource}"
                f"  -> {route.function_logical_id}"
            )
        for logical_id, name in stack.buckets.items():
            lines.append(f"bucket         {logical_id}: {endpoint}/{name}")
        for logical_id, url in stack.queues.items():
            # moto names queues with AWS's host; the same path answers on the local endpoint.
            local_url = endpoint + urlsplit(url).path
            lines.append(f"queue          {logical_id}: {local_url}")
        for logical_id, name in stack.event_buses.items():
            lines.append(f"event bus      {logical_id}: {name}")
        for logical_id, arn in stack.state_machines.items():
            lines.append(f"state machine  {logical_id}: {arn}")
        for function in stack.functions.values():
            lines.append(f"function       {function.logical_id}: {_shown(function.handler_path)}")
        for worker in self.workers:
            lines.append(
                f"GPU worker     {worker.name}: `python -m gpu_service.worker` (pid {worker.pid}), "
                f"model {self._model_id}, polling {GPU_QUEUE_ID}"
            )
        if not self.workers:
            lines.append("GPU worker     none started (--gpu-workers 0)")
        if self._bedrock is not None:
            lines.append(f"Bedrock        local stand-in at {self._bedrock.endpoint_url}")
        else:
            lines.append(
                "Bedrock        Amazon Bedrock itself (needs credentials and network; "
                "--bedrock fake for the local stand-in)"
            )
        if RESULT_QUEUE_ID in stack.queues:
            lines.append(f"subscriber     printing each result event from {RESULT_QUEUE_ID}")
        for line in lines:
            self.say(line)

    # --- Stop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        if self._api is not None:
            self._api.stop()
            self._api = None
        with self._workers_lock:
            workers, self._workers = self._workers, []
        for worker in workers:  # finishing their batches needs moto: stopped before it
            worker.request_stop()
        for worker in workers:
            worker.stop(timeout_s=30)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None
        if self._bedrock is not None:
            self._bedrock.stop()
            self._bedrock = None
        self._moto.close()
        self._aws = None
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environment.clear()
        self._release_process()

    def _release_process(self) -> None:
        with LocalStack._running_lock:
            if LocalStack._running is self:
                LocalStack._running = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_MODEL_ADVICE = (
    "Set MODEL_ID (or --model-id) to a diffusers model directory (or a hub id in the local "
    "cache), unset it to use the tiny offline model, or start with --gpu-workers 0."
)


def _template_parameters(template: Path) -> dict[str, Any]:
    from imagegen.local.deploy import load_sam_template

    return dict(load_sam_template(template).get("Parameters") or {})


def _template_default(template: Path, name: str, fallback: str) -> str:
    return str(_template_parameters(template).get(name, {}).get("Default", fallback))


def _shown(path: Path) -> Path:
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def _format(parameters: Mapping[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in sorted(parameters.items()))


def describe_event(event: Mapping[str, Any]) -> list[str]:
    """Lines `imagegen local` prints for one result event."""
    detail = event.get("detail") or {}
    head = f"[event] {event.get('detail-type')}  execution_id={detail.get('execution_id')}"
    lines = [head]
    for image in detail.get("images") or []:
        lines.append(
            f"        image {image.get('index')} {image.get('width')}x{image.get('height')}: "
            f"{image.get('url')}"
        )
    for failed in detail.get("failed_images") or []:
        lines.append(f"        image {failed.get('index')} failed: {failed.get('error')}")
    if detail.get("error"):
        error = detail["error"]
        lines.append(f"        error {error.get('code')}: {error.get('message')}")
    return lines
