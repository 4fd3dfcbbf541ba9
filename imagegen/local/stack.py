"""The whole system on 127.0.0.1: `imagegen local`, `imagegen demo` and the measurement script.

``LocalStack.start()`` brings up, in this process:
- moto's server (S3, SQS, EventBridge, Step Functions executing our ASL, ...) on ``moto_port``;
- the stack built from template.yaml (``deploy.deploy_stack``), its Lambda functions running
  in-process (``lambda_runtime``);
- the API on ``api_port`` (``api_gateway``), handing API Gateway proxy events to ApiFunction;
- the GPU worker (``gpu_service.worker``) consuming the GPU job queue with the engine;
- the Bedrock stand-in (``fake_bedrock``), only when asked for;
- a subscriber polling the result-events queue, reporting each event to ``on_event``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import boto3

from imagegen.local.api_gateway import LocalApiGateway, LocalApiServer
from imagegen.local.deploy import DeployedStack, deploy_stack
from imagegen.local.lambda_runtime import LambdaRuntime
from imagegen.local.moto_server import MotoServer, ensure_port_free, free_port, start_moto_server

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
DEFAULT_API_PORT = 3000
GPU_QUEUE_ID = "GpuJobQueue"
RESULT_QUEUE_ID = "ResultEventsQueue"
API_FUNCTION_ID = "ApiFunction"

BedrockMode = Literal["fake", "aws"]


class ModelLoadError(RuntimeError):
    """The GPU worker's model could not be loaded."""


@dataclass
class LocalStackOptions:
    template: Path = DEFAULT_TEMPLATE
    host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    moto_port: int | None = None
    """None: a free port."""
    bedrock: BedrockMode = "aws"
    """fake: the local Bedrock stand-in; aws: Bedrock itself (needs credentials and network)."""
    gpu_worker: bool = True
    model_id: str | None = None
    """The GPU worker's model: MODEL_ID, else the tiny random-weight model (built if missing)."""
    parameters: dict[str, str] = field(default_factory=dict)
    function_environment: dict[str, str] = field(default_factory=dict)
    """Variables every function gets under its own (e.g. POWERTOOLS_METRICS_DISABLED)."""
    stack_name: str = "imagegen-local"
    region: str = "us-east-1"


@dataclass
class EngineTimer:
    """Seconds the engine spent generating, per call (for the orchestration figures)."""

    calls: list[tuple[float, float]] = field(default_factory=list)
    """(started at, seconds), both in ``time.perf_counter()`` terms."""

    def wrap(self, engine: Any) -> Any:
        generate = engine.generate

        def timed(specs: Any) -> Any:
            started = time.perf_counter()
            try:
                return generate(specs)
            finally:
                self.calls.append((started, time.perf_counter() - started))

        engine.generate = timed
        return engine

    def seconds_between(self, start: float, end: float) -> float:
        return sum(seconds for at, seconds in self.calls if start <= at <= end)


class LocalStack:
    """Everything `imagegen local` runs; ``start()`` then ``stop()`` (or use ``with``)."""

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
        self.engine_timer = EngineTimer()
        self.events: list[dict[str, Any]] = []
        self.event_received_at: dict[str, float] = {}
        """execution id -> ``time.perf_counter()`` when its result event was received."""
        self._event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._moto: MotoServer | None = None
        self._api: LocalApiServer | None = None
        self._bedrock: Any = None
        self._engine: Any = None
        self._saved_environment: dict[str, str | None] = {}

    # --- Start ----------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://{self.options.host}:{self.options.api_port}"

    def start(self) -> LocalStack:
        options = self.options
        ensure_port_free(options.host, options.api_port, "the API")
        if options.moto_port is not None:
            ensure_port_free(options.host, options.moto_port, "the moto server")
        if options.gpu_worker:
            self._engine = self._load_engine()  # fails early, before anything is listening
        try:
            self._start_services()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_services(self) -> None:
        options = self.options
        moto_port = options.moto_port or free_port(options.host)
        self._moto = start_moto_server(moto_port, options.host)
        endpoint = self._moto.endpoint_url
        environment = {"AWS_ENDPOINT_URL": endpoint, "MOTO_PORT": str(moto_port)}
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
        self.stack = deploy_stack(
            options.template,
            parameters=parameters,
            stack_name=options.stack_name,
            region=options.region,
            endpoint_url=endpoint,
            runtime=LambdaRuntime({**options.function_environment, **environment}),
        )
        self.say(
            f"stack {self.stack.stack_name} created from {options.template} "
            f"in {time.perf_counter() - started:.1f} s"
            + (f" (parameters: {_format(parameters)})" if parameters else "")
        )
        self._start_subscriber()
        if self._engine is not None:
            self._start_worker()
        runtime = self.stack.runtime or LambdaRuntime(environment)
        self._api = LocalApiServer(
            LocalApiGateway(self.stack, runtime),
            port=options.api_port,
            host=options.host,
            log=lambda line: self.say(f"[api] {line}"),
        ).start()
        self._describe(endpoint)

    def _set_environment(self, variables: Mapping[str, str]) -> None:
        for name, value in variables.items():
            self._saved_environment.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _load_engine(self) -> Any:
        from gpu_service.settings import Settings

        model_id = self.options.model_id or os.environ.get("MODEL_ID")
        # Offline, and without the libraries' progress bars in the stack's output.
        for name, value in {
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "DIFFUSERS_VERBOSITY": "error",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        }.items():
            os.environ.setdefault(name, value)
        try:
            if not model_id:
                from gpu_service.tiny_model import ensure_tiny_model

                self.say(
                    "GPU worker: building/using the tiny random-weight model (images are noise)"
                )
                model_id = str(ensure_tiny_model())
            from diffusers.utils import logging as diffusers_logging

            from gpu_service.engine import Engine

            diffusers_logging.disable_progress_bar()

            started = time.perf_counter()
            settings = Settings(model_id=model_id, warmup=False)
            engine = Engine.load(settings)
        except Exception as error:
            raise ModelLoadError(
                f"the GPU worker cannot load model {model_id!r}: {type(error).__name__}: {error}. "
                "Set MODEL_ID to a diffusers model directory (or a hub id in the local cache), "
                "unset it to use the tiny offline model, or start with --no-gpu-worker."
            ) from error
        self.say(f"GPU worker: loaded {model_id} in {time.perf_counter() - started:.1f} s")
        return self.engine_timer.wrap(engine)

    def _start_worker(self) -> None:
        from gpu_service.settings import Settings
        from gpu_service.worker import Worker

        assert self.stack is not None
        settings = Settings(
            model_id=self._engine.model_id,
            gpu_queue_url=self.stack.queues[GPU_QUEUE_ID],
            images_bucket=self.stack.only("buckets"),
            receive_wait_seconds=1,  # a quick exit on Ctrl-C
            batch_wait_ms=0.0,
            warmup=False,
        )
        worker = Worker(settings, self._engine)
        self._spawn("gpu-worker", worker.run, self._stop)

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
            try:
                messages = sqs.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
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
            lines.append(f"bucket         {logical_id}: {name}")
        for logical_id, url in stack.queues.items():
            lines.append(f"queue          {logical_id}: {url}")
        for logical_id, name in stack.event_buses.items():
            lines.append(f"event bus      {logical_id}: {name}")
        for logical_id, arn in stack.state_machines.items():
            lines.append(f"state machine  {logical_id}: {arn}")
        for function in stack.functions.values():
            lines.append(f"function       {function.logical_id}: {_shown(function.handler_path)}")
        if self._engine is not None:
            lines.append(
                f"GPU worker     {self._engine.model_id} on {self._engine.device}, "
                f"polling {GPU_QUEUE_ID}"
            )
        else:
            lines.append("GPU worker     not started (--no-gpu-worker)")
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
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._bedrock is not None:
            self._bedrock.stop()
            self._bedrock = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environment.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
