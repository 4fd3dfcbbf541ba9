"""The `imagegen` command: the local stack, the client, `invoke` and `models`.

imagegen local                      # the whole system on 127.0.0.1 (API on :3000) until Ctrl-C
imagegen demo                       # start it, generate one image end to end, stop
imagegen generate "a prompt" [--size 512x512] [--backend gpu] [--steps N] [--guidance G]
                  [--format png|jpeg|webp] [--out file.png]
imagegen status <execution_id>
imagegen invoke <FunctionLogicalId> -e events/<file>.json   # against `imagegen local` if it runs
imagegen models                     # the Bedrock lifecycle of the allowed models
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: each command pays only for what it needs
    from imagegen.local.deploy import DeployedStack
    from imagegen.local.lambda_runtime import FunctionSpec, LambdaRuntime
    from imagegen.local.running_stack import StackRecord

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PORT_IN_USE = 3
EXIT_MODEL = 4
EXIT_DEPLOY = 5

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
DEMO_PROMPT = "a lighthouse on a cliff at dawn, oil painting"


def _error(message: str) -> None:
    print(f"imagegen: error: {message}", file=sys.stderr, flush=True)


def _say(text: str) -> None:
    print(text, flush=True)


def _parameters(pairs: Sequence[str] | None) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise SystemExit(
                f"imagegen: error: --parameter-overrides wants Key=Value, got {pair!r}"
            )
        parameters[key] = value
    return parameters


def _quiet_libraries(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # moto logs each resource type it skips and each failed state; werkzeug each request.
        # samtranslator warns of its unsent usage metrics each time a template is translated.
        for name in (
            "moto",
            "werkzeug",
            "botocore",
            "samtranslator",
            "imagegen.local.lambda_runtime",
        ):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        import warnings

        warnings.filterwarnings("ignore", module="moto")
        warnings.filterwarnings("ignore", message="No application metrics to publish")


# --- local / demo --------------------------------------------------------------------------------


def _stack_options(args: argparse.Namespace) -> Any:
    from imagegen.local.stack import LocalStackOptions

    parameters = _parameters(args.parameter_overrides)
    function_environment: dict[str, str] = {}
    if not args.verbose:
        # The functions run in processes of their own: the warning _quiet_libraries hides here
        # (powertools' "No application metrics to publish") is hidden there too.
        function_environment["PYTHONWARNINGS"] = "ignore:No application metrics to publish"
    if args.command == "demo" and not args.verbose:
        # The demo shows the workflow's outcome; the functions' INFO logs and metric records
        # (CloudWatch's embedded format) would bury it. `imagegen local` shows them.
        parameters.setdefault("LogLevel", "WARNING")
        function_environment["POWERTOOLS_METRICS_DISABLED"] = "true"
    return LocalStackOptions(
        template=Path(args.template).resolve(),
        api_port=args.port,
        moto_port=args.moto_port,
        bedrock=args.bedrock,
        gpu_workers=0 if args.no_gpu_worker else args.gpu_workers,
        model_id=args.model_id,
        parameters=parameters,
        function_environment=function_environment,
        allow_loopback_webhooks=args.allow_loopback_webhooks,
    )


@contextlib.contextmanager
def _running_stack(args: argparse.Namespace, on_event: Any = None) -> Iterator[Any]:
    """The local stack, started, with startup failures turned into clear messages."""
    from imagegen.local.deploy import DeployError
    from imagegen.local.moto_server import PortInUseError
    from imagegen.local.stack import LocalStack, ModelLoadError

    stack = LocalStack(_stack_options(args), say=_say, on_event=on_event)
    try:
        stack.start()
    except PortInUseError as error:
        _error(str(error))
        raise SystemExit(EXIT_PORT_IN_USE) from error
    except ModelLoadError as error:
        _error(str(error))
        raise SystemExit(EXIT_MODEL) from error
    except DeployError as error:
        _error(f"the stack could not be created from {args.template}: {error}")
        raise SystemExit(EXIT_DEPLOY) from error
    record = _record_running_stack(stack)
    try:
        yield stack
    finally:
        if record is not None:
            from imagegen.local.running_stack import remove_record

            remove_record(record)  # first: `imagegen invoke` must not pick a stopping stack
        _say("stopping the local stack ...")
        stack.stop()
        _say("stopped")


def _record_running_stack(stack: Any) -> StackRecord | None:
    """Write the record `imagegen invoke` finds the stack by; None if it cannot be written."""
    from imagegen.local.running_stack import StackRecord, write_record

    record = StackRecord.now(
        aws_endpoint_url=stack.endpoint_url,
        api_url=stack.api_url,
        stack_name=stack.options.stack_name,
        region=stack.options.region,
        template=stack.options.template,
    )
    try:
        path = write_record(record)
    except OSError as error:
        _error(f"cannot record the running stack ({error}): `imagegen invoke` will not find it")
        return None
    _say(f"recorded in {_shown(path)}: `imagegen invoke` runs functions against this stack")
    return record


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it (shorter to read)."""
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def cmd_local(args: argparse.Namespace) -> int:
    from imagegen.local.stack import describe_event

    def on_event(event: dict[str, Any]) -> None:
        # One write per event, so its lines stay together among the functions' log lines.
        _say("\n".join(describe_event(event)))

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    with _running_stack(args, on_event) as stack:
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        _say(f"imagegen local stack ready: API {stack.api_url} (Ctrl-C to stop)")
        _say(f"playground: open {stack.api_url}/ in a browser; API docs: {stack.api_url}/docs")
        while not stop.wait(0.5):
            pass
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from imagegen.client import ApiError, ImagegenClient
    from imagegen.local.stack import describe_event

    with _running_stack(args) as stack, ImagegenClient(stack.api_url, args.api_key) as client:
        request = {"prompt": args.prompt, "backend": "gpu"}
        _say(f"POST {stack.api_url}/generate {json.dumps(request)}")
        started = time.monotonic()
        try:
            accepted = client.submit(request)
        except ApiError as error:
            _error(f"HTTP {error.status}: {error.body}")
            return EXIT_FAILED
        execution_id = accepted["execution_id"]
        _say(f"202 Accepted: execution_id={execution_id}")
        event = stack.wait_for_event(execution_id, timeout_s=args.timeout)
        if event is None:
            _error(f"no result event for {execution_id} within {args.timeout:.0f} s")
            return EXIT_FAILED
        _say("\n".join(describe_event(event)))
        _say(f"result event after {time.monotonic() - started:.2f} s")
        if event.get("detail-type") != "Image Generated":
            return EXIT_FAILED
        image = event["detail"]["images"][0]
        out = Path(args.out or REPO_ROOT / "out" / f"demo-{execution_id}.png").resolve()
        client.download(image["url"], out)
        _say(f"wrote {out} ({image['width']}x{image['height']} PNG)")
    return 0


# --- client --------------------------------------------------------------------------------------


def _client_from(args: argparse.Namespace) -> Any:
    from imagegen.client import ImagegenClient

    return ImagegenClient(args.api_url, args.api_key)


def _size(text: str) -> tuple[int, int]:
    width, separator, height = text.lower().partition("x")
    if not separator or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"--size wants WIDTHxHEIGHT (e.g. 512x512), got {text!r}")
    return int(width), int(height)


def cmd_generate(args: argparse.Namespace) -> int:
    from imagegen.client import output_paths
    from imagegen_common.models import OutputFormat

    request: dict[str, Any] = {"prompt": args.prompt, "num_images": args.num_images}
    if args.negative_prompt is not None:
        request["negative_prompt"] = args.negative_prompt
    if args.size is not None:
        request["width"], request["height"] = args.size
    for name, field in (
        ("seed", "seed"),
        ("backend", "backend"),
        ("model_id", "model_id"),
        ("steps", "steps"),
        ("guidance", "guidance_scale"),
        ("scheduler", "scheduler"),
        ("format", "output_format"),
        ("quality", "output_quality"),
        ("aspect_ratio", "aspect_ratio"),
    ):
        if getattr(args, name) is not None:
            request[field] = getattr(args, name)
    extension = OutputFormat(args.format or "png").extension

    from imagegen.progress_display import job_display

    # A progress bar on a terminal (queue position, steps or images, download); lines otherwise.
    with _client_from(args) as client, contextlib.closing(job_display()) as display:
        accepted = client.submit(request, idempotency_key=args.idempotency_key)
        execution_id = accepted["execution_id"]
        display.note(f"submitted: execution_id={execution_id}")
        final = client.follow(execution_id, display.update, timeout_s=args.timeout)
        if final.status != "SUCCEEDED":
            display.close()
            code, message = (final.error.code, final.error.message) if final.error else ("", "")
            _error(f"{final.status}: {code}: {message}")
            return EXIT_FAILED
        paths = output_paths(args.out, execution_id, len(final.images), extension)
        for path, image in zip(paths, final.images, strict=True):
            client.download(
                image.url,
                path,
                lambda done, total, name=path.name: display.download(name, done, total),
            )
            display.note(f"wrote {path.resolve()} ({image.width}x{image.height})")
        display.close()
        for failed in final.failed_images:
            _error(f"image {failed.index} failed: {failed.error.code}: {failed.error.message}")
        return EXIT_FAILED if not final.images else 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client_from(args) as client:
        _say(json.dumps(client.status(args.execution_id), indent=2))
    return 0


# --- invoke / models -----------------------------------------------------------------------------


def _fake_credentials() -> dict[str, str]:
    """What moto needs to sign requests with when the environment has no credentials."""
    from imagegen.local.running_stack import LOCAL_STACK_CREDENTIALS

    return {
        "AWS_ACCESS_KEY_ID": LOCAL_STACK_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": LOCAL_STACK_CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }


def _note(text: str) -> None:
    """A progress line of `imagegen invoke`, on standard error: standard output carries the
    function's result alone, as with `sam local invoke` (``... | jq`` works)."""
    print(f"[invoke] {text}", file=sys.stderr, flush=True)


def cmd_invoke(args: argparse.Namespace) -> int:
    """Run one function of the template with an event, like `sam local invoke`.

    Against the running local stack when there is one (`imagegen local`, found by its record),
    else against a stack deployed for this call into an in-process moto. Either way the event's
    sample resource names become the stack's own (``sample_events``).
    """
    from imagegen.local.deploy import DeployError

    template = Path(args.template).resolve()
    event = _read_event(args.event)
    if event is None:
        return EXIT_USAGE
    try:
        functions = _template_functions(template)
    except (OSError, DeployError, ValueError) as error:
        _error(f"cannot read the template {args.template}: {error}")
        return EXIT_DEPLOY
    if args.function not in functions:
        _error(
            f"{args.function} is not a function of {args.template}; "
            f"functions: {', '.join(sorted(functions))}"
        )
        return EXIT_USAGE
    for name, value in _fake_credentials().items():
        os.environ.setdefault(name, value)
    record, reason = _running_stack_for(args, template)
    with contextlib.ExitStack() as resources:
        bedrock_endpoint = None
        if args.bedrock == "fake":
            from imagegen.local.fake_bedrock import FakeBedrock

            bedrock_endpoint = resources.enter_context(FakeBedrock()).endpoint_url
        if record is not None:
            stack, runtime = _attach(record, args.function, bedrock_endpoint)
        else:
            _note(f"{reason}: deploying {_shown(template)} into an in-process moto ...")
            stack, runtime = _deploy_in_process(args, template, bedrock_endpoint, resources)
        if stack is None or runtime is None:
            return EXIT_DEPLOY
        resources.callback(runtime.close)
        function = stack.functions.get(args.function)
        if function is None:
            _error(f"{args.function} has no local code to run (CodeUri in S3, or inline)")
            return EXIT_USAGE
        return _invoke_function(runtime, function.spec, _with_stack_names(event, stack))


def _read_event(source: str) -> Any:
    """The event of ``-e`` (a file, or '-' for standard input); None (said why) if unreadable."""
    try:
        return json.load(sys.stdin) if source == "-" else json.loads(Path(source).read_text())
    except (OSError, json.JSONDecodeError) as error:
        _error(f"cannot read the event {source}: {error}")
        return None


def _template_functions(template: Path) -> set[str]:
    """The logical ids of the template's functions (read before deploying: a typo costs no
    deployment)."""
    from imagegen.local.deploy import load_sam_template

    resources = load_sam_template(template).get("Resources") or {}
    if not isinstance(resources, dict):
        raise ValueError("its Resources are not a mapping")
    return {
        logical_id
        for logical_id, resource in resources.items()
        if isinstance(resource, dict)
        and resource.get("Type") in ("AWS::Serverless::Function", "AWS::Lambda::Function")
    }


def _running_stack_for(args: argparse.Namespace, template: Path) -> tuple[StackRecord | None, str]:
    """(the running stack's record, or None and why there is none to use)."""
    from imagegen.local.running_stack import NoRunningStackError, find_running_stack

    if args.no_running_stack:
        return None, "--no-running-stack"
    if args.parameter_overrides:
        # The running stack's parameters are set: other values need a stack of their own.
        return None, "--parameter-overrides wants a stack of its own"
    try:
        record = find_running_stack(template)
    except NoRunningStackError as error:
        return None, str(error)
    return record, ""


def _attach(
    record: StackRecord, function_id: str, bedrock_endpoint: str | None
) -> tuple[DeployedStack | None, LambdaRuntime | None]:
    """The running stack, read through its CloudFormation, and an in-process runtime whose
    functions call its endpoint; (None, None) when it cannot be read (said why)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from imagegen.local.deploy import DeployError
    from imagegen.local.lambda_runtime import LambdaRuntime
    from imagegen.local.running_stack import read_stack

    _note(
        f"using the local stack at {record.aws_endpoint_url} (pid {record.pid}): stack "
        f"{record.stack_name} from {_shown(record.template)}, API {record.api_url}"
    )
    try:
        stack = read_stack(record)
    except (BotoCoreError, ClientError, DeployError) as error:
        _error(f"cannot read stack {record.stack_name} at {record.aws_endpoint_url}: {error}")
        return None, None
    function = stack.functions.get(function_id)
    bedrock_region = (function.environment if function else {}).get("BEDROCK_REGION")
    environment = {
        "AWS_ENDPOINT_URL": record.aws_endpoint_url,
        # Bedrock is not moto's: the stand-in, or Amazon Bedrock itself.
        **_bedrock_variables(bedrock_endpoint, bedrock_region or record.region),
    }
    return stack, LambdaRuntime(environment)


def _deploy_in_process(
    args: argparse.Namespace,
    template: Path,
    bedrock_endpoint: str | None,
    resources: contextlib.ExitStack,
) -> tuple[DeployedStack | None, LambdaRuntime | None]:
    """A stack deployed from ``template`` into moto's in-process mock (open until ``resources``
    close) and the runtime its functions run in; (None, None) when it cannot be created."""
    from imagegen.local.deploy import DeployError, deploy_stack
    from imagegen.local.lambda_runtime import LambdaRuntime
    from imagegen.local.moto_aws import local_aws

    resources.enter_context(local_aws())
    # Under the mock every AWS call is answered in this process; only the stand-in is not AWS.
    runtime = LambdaRuntime(_bedrock_variables(bedrock_endpoint, None))
    started = time.perf_counter()
    try:
        stack = deploy_stack(
            template, parameters=_parameters(args.parameter_overrides), runtime=runtime
        )
    except DeployError as error:
        runtime.close()
        _error(str(error))
        return None, None
    _note(f"deployed stack {stack.stack_name} in {time.perf_counter() - started:.1f} s")
    return stack, runtime


def _bedrock_variables(fake_endpoint: str | None, region: str | None) -> dict[str, str]:
    """Where the functions' Bedrock clients go: the stand-in at ``fake_endpoint``, else Amazon
    Bedrock in ``region`` (None: leave them to boto3)."""
    if fake_endpoint is not None:
        return {
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_endpoint,
            "AWS_ENDPOINT_URL_BEDROCK": fake_endpoint,
        }
    if region is None:
        return {}
    return {
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": f"https://bedrock-runtime.{region}.amazonaws.com",
        "AWS_ENDPOINT_URL_BEDROCK": f"https://bedrock.{region}.amazonaws.com",
    }


def _with_stack_names(event: Any, stack: DeployedStack) -> Any:
    """``event`` with the sample events' resource names replaced by the stack's, each said."""
    from imagegen.local.sample_events import resolve_sample_names, stack_names

    resolved, replaced = resolve_sample_names(event, stack_names(stack))
    for placeholder, name in replaced.items():
        _note(f"sample name {placeholder} -> {name}")
    return resolved


def _invoke_function(runtime: LambdaRuntime, spec: FunctionSpec, event: Any) -> int:
    """Cold-start and invoke the function, timing each; the result (or Lambda's error payload)
    is the last thing on standard output."""
    from imagegen.local.lambda_bootstrap import IMPORT_ERROR
    from imagegen.local.lambda_runtime import HandlerLoadError

    _note(f"invoking {spec.logical_id} ({_shown(spec.module_path)}, {spec.handler}) ...")
    started = time.perf_counter()
    phase = "cold start"
    try:
        # What the function prints or logs goes where these notes go: stdout is for its result.
        with contextlib.redirect_stdout(sys.stderr):
            runtime.load(spec)
            _note(f"cold start (importing the handler) {time.perf_counter() - started:.2f} s")
            started, phase = time.perf_counter(), "invocation"
            result = runtime.invoke(spec, event)
    except Exception as error:
        error_type = IMPORT_ERROR if isinstance(error, HandlerLoadError) else type(error).__name__
        _say(json.dumps({"errorType": error_type, "errorMessage": str(error)}, indent=2))
        _error(
            f"{spec.logical_id} failed in its {phase}: {error_type} "
            f"after {time.perf_counter() - started:.2f} s"
        )
        return EXIT_FAILED
    _note(f"{spec.logical_id} returned in {time.perf_counter() - started:.2f} s")
    _say(json.dumps(result, indent=2, default=str))
    return 0


# --- parser --------------------------------------------------------------------------------------


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"wants a whole number of 0 or more, got {text!r}")
    return int(text)


def _add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--template", default=str(DEFAULT_TEMPLATE), help="SAM template (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=3000, help="API port on 127.0.0.1 (default: 3000)"
    )
    parser.add_argument(
        "--moto-port", type=int, default=None, help="moto server port (default: a free one)"
    )
    parser.add_argument(
        "--bedrock",
        choices=["fake", "aws"],
        default="aws",
        help="fake: answer the Bedrock branch with the local stand-in; aws: Amazon Bedrock itself",
    )
    parser.add_argument(
        "--gpu-workers",
        type=_count,
        default=1,
        metavar="N",
        help="GPU worker processes to start (default: 1; 0: none)",
    )
    parser.add_argument(
        "--no-gpu-worker", action="store_true", help="start no GPU worker (--gpu-workers 0)"
    )
    parser.add_argument(
        "--model-id", default=None, help="GPU worker model (default: MODEL_ID, else the tiny model)"
    )
    parser.add_argument(
        "--parameter-overrides", nargs="*", metavar="Key=Value", help="template parameter values"
    )
    parser.add_argument(
        "--allow-loopback-webhooks",
        action="store_true",
        help="accept and deliver webhooks to 127.0.0.1 (http allowed there), for local receivers",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log moto and library details")


def _add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url",
        default=os.environ.get("IMAGEGEN_API_URL", "http://127.0.0.1:3000"),
        help="the API's base URL (default: $IMAGEGEN_API_URL or %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("IMAGEGEN_API_KEY"),
        help="sent as x-api-key (default: $IMAGEGEN_API_KEY)",
    )


def build_parser() -> argparse.ArgumentParser:
    # The domain model only (pydantic): the choices of the generation controls.
    from imagegen_common.models import AspectRatio, OutputFormat, Scheduler

    parser = argparse.ArgumentParser(
        prog="imagegen", description=__doc__.splitlines()[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True)

    local = commands.add_parser("local", help="run the whole system on 127.0.0.1 until Ctrl-C")
    _add_stack_arguments(local)
    local.set_defaults(handler=cmd_local)

    demo = commands.add_parser("demo", help="start the local stack, generate one image, stop")
    _add_stack_arguments(demo)
    demo.add_argument("--prompt", default=DEMO_PROMPT)
    demo.add_argument(
        "--out", type=Path, default=None, help="where to write the PNG (default: out/)"
    )
    demo.add_argument("--api-key", default="demo-key")
    demo.add_argument("--timeout", type=float, default=300.0)
    demo.set_defaults(handler=cmd_demo)

    generate = commands.add_parser("generate", help="submit a prompt, wait, download the image(s)")
    generate.add_argument("prompt")
    generate.add_argument("--negative-prompt", default=None)
    generate.add_argument("--size", type=_size, default=None, metavar="WxH")
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--backend", choices=["gpu", "bedrock"], default=None)
    generate.add_argument("--model-id", default=None, help="a Bedrock model id from the allow-list")
    generate.add_argument("--num-images", type=int, default=1)
    generate.add_argument("--steps", type=int, default=None, help="denoising steps (gpu)")
    generate.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (gpu)"
    )
    generate.add_argument("--scheduler", choices=[s.value for s in Scheduler], default=None)
    generate.add_argument("--format", choices=[f.value for f in OutputFormat], default=None)
    generate.add_argument("--quality", type=int, default=None, help="1-100, jpeg and webp")
    generate.add_argument(
        "--aspect-ratio", choices=[r.value for r in AspectRatio], default=None, help="bedrock"
    )
    generate.add_argument(
        "--out", type=Path, default=None, help="file.png (file-<i>.png for several; default: out/)"
    )
    generate.add_argument("--idempotency-key", default=None)
    generate.add_argument("--timeout", type=float, default=600.0)
    _add_client_arguments(generate)
    generate.set_defaults(handler=cmd_generate)

    status = commands.add_parser("status", help="print a job's status")
    status.add_argument("execution_id")
    _add_client_arguments(status)
    status.set_defaults(handler=cmd_status)

    invoke = commands.add_parser(
        "invoke",
        help="run one function with an event, like sam local invoke: against the running local "
        "stack when there is one, else a stack deployed for this call",
    )
    invoke.add_argument("function", help="the function's logical id, e.g. ValidatePromptFunction")
    invoke.add_argument("-e", "--event", required=True, help="event JSON file ('-' for stdin)")
    invoke.add_argument("--template", default=str(DEFAULT_TEMPLATE))
    invoke.add_argument(
        "--bedrock",
        choices=["fake", "aws"],
        default="fake",
        help="fake (default): the function's Bedrock calls go to the local stand-in; aws: to "
        "Amazon Bedrock itself",
    )
    invoke.add_argument(
        "--parameter-overrides",
        nargs="*",
        metavar="Key=Value",
        help="template parameter values (deploys a stack for this call: the running one keeps "
        "its own)",
    )
    invoke.add_argument(
        "--no-running-stack",
        action="store_true",
        help="deploy a stack for this call even when `imagegen local` is running",
    )
    invoke.add_argument("-v", "--verbose", action="store_true")
    invoke.set_defaults(handler=cmd_invoke)

    from imagegen.webhooks import add_webhook_commands

    add_webhook_commands(commands, DEFAULT_TEMPLATE)

    # Dispatched to imagegen.model_lifecycle.main before parsing (see main); listed for --help.
    commands.add_parser("models", help="check the Bedrock lifecycle of the allowed models")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["models"]:
        # Every option after `models` is model_lifecycle's own (argparse would claim --help).
        from imagegen.model_lifecycle import main as models_main

        return int(models_main(arguments[1:]))
    args = build_parser().parse_args(arguments)
    _quiet_libraries(getattr(args, "verbose", False))
    if args.command in ("local", "demo", "invoke"):
        # These run many threads that print (API, functions, worker, event printer).
        from imagegen.local.console import LineAtomicStream

        with contextlib.redirect_stdout(LineAtomicStream(sys.stdout)):
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.command in ("generate", "status"):
        import httpx

        from imagegen.client import ApiError

        try:
            return int(args.handler(args))
        except ApiError as error:
            # As the API wrote it: status and body, nothing reworded.
            _error(f"HTTP {error.status} from {error.method} {error.url}")
            print(error.body, file=sys.stderr, flush=True)
            return EXIT_FAILED
        except httpx.HTTPError as error:
            _error(
                f"cannot reach the API at {args.api_url}: {error} (is `imagegen local` running?)"
            )
            return EXIT_FAILED
    try:
        return int(args.handler(args))
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
