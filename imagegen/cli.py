"""The `imagegen` command: the local stack, the client, `invoke` and `models`.

imagegen local                      # the whole system on 127.0.0.1 (API on :3000) until Ctrl-C
imagegen demo                       # start it, generate one image end to end, stop
imagegen generate "a prompt" [--size 512x512] [--backend gpu] [--out file.png]
imagegen status <execution_id>
imagegen invoke <FunctionLogicalId> -e events/<file>.json
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
from typing import Any

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
    try:
        yield stack
    finally:
        _say("stopping the local stack ...")
        stack.stop()
        _say("stopped")


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

    request: dict[str, Any] = {"prompt": args.prompt, "num_images": args.num_images}
    if args.negative_prompt is not None:
        request["negative_prompt"] = args.negative_prompt
    if args.size is not None:
        request["width"], request["height"] = args.size
    for name in ("seed", "backend", "model_id"):
        if getattr(args, name) is not None:
            request[name] = getattr(args, name)

    def progress(status: dict[str, Any], elapsed: float) -> None:
        stage = f" ({status['stage']})" if status.get("stage") else ""
        _say(f"[{elapsed:6.1f}s] {status.get('status')}{stage}")

    with _client_from(args) as client:
        accepted = client.submit(request, idempotency_key=args.idempotency_key)
        execution_id = accepted["execution_id"]
        _say(f"submitted: execution_id={execution_id}")
        final = client.wait(execution_id, on_change=progress, timeout_s=args.timeout)
        if final.get("status") != "SUCCEEDED":
            error = final.get("error") or {}
            _error(f"{final.get('status')}: {error.get('code')}: {error.get('message')}")
            return EXIT_FAILED
        images = final.get("images") or []
        for path, image in zip(
            output_paths(args.out, execution_id, len(images)), images, strict=True
        ):
            client.download(image["url"], path)
            _say(f"wrote {path.resolve()} ({image['width']}x{image['height']})")
        for failed in final.get("failed_images") or []:
            _error(f"image {failed['index']} failed: {failed['error']}")
        return EXIT_FAILED if not images else 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client_from(args) as client:
        _say(json.dumps(client.status(args.execution_id), indent=2))
    return 0


# --- invoke / models -----------------------------------------------------------------------------


def cmd_invoke(args: argparse.Namespace) -> int:
    """Deploy the template into the in-process mock and run one function with an event."""
    from moto import mock_aws

    from imagegen.local.deploy import DeployError, deploy_stack
    from imagegen.local.moto_workarounds import MOTO_CONFIG

    event_path = Path(args.event)
    try:
        event = json.loads(event_path.read_text()) if args.event != "-" else json.load(sys.stdin)
    except (OSError, json.JSONDecodeError) as error:
        _error(f"cannot read the event {args.event}: {error}")
        return EXIT_USAGE
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    os.environ.pop("AWS_ENDPOINT_URL", None)  # the mock, not a server
    with contextlib.ExitStack() as resources:
        if args.bedrock == "fake":
            from imagegen.local.fake_bedrock import FakeBedrock

            bedrock = resources.enter_context(FakeBedrock())
            os.environ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = bedrock.endpoint_url
            os.environ["AWS_ENDPOINT_URL_BEDROCK"] = bedrock.endpoint_url
        resources.enter_context(mock_aws(config=MOTO_CONFIG))
        try:
            stack = deploy_stack(args.template, parameters=_parameters(args.parameter_overrides))
        except DeployError as error:
            _error(str(error))
            return EXIT_DEPLOY
        if args.function not in stack.functions:
            _error(
                f"{args.function} is not a function of {args.template}; "
                f"functions: {', '.join(sorted(stack.functions))}"
            )
            return EXIT_USAGE
        started = time.perf_counter()
        try:
            result = stack.invoke(args.function, event)
        except Exception as error:
            _say(
                json.dumps(
                    {"errorType": type(error).__name__, "errorMessage": str(error)}, indent=2
                )
            )
            _error(
                f"{args.function} raised {type(error).__name__} "
                f"after {time.perf_counter() - started:.2f} s"
            )
            return EXIT_FAILED
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
    generate.add_argument(
        "--out", type=Path, default=None, help="file.png (file-<i>.png for several)"
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
        "invoke", help="run one function with an event, like sam local invoke"
    )
    invoke.add_argument("function", help="the function's logical id, e.g. ValidatePromptFunction")
    invoke.add_argument("-e", "--event", required=True, help="event JSON file ('-' for stdin)")
    invoke.add_argument("--template", default=str(DEFAULT_TEMPLATE))
    invoke.add_argument("--bedrock", choices=["fake", "aws"], default="fake")
    invoke.add_argument("--parameter-overrides", nargs="*", metavar="Key=Value")
    invoke.add_argument("-v", "--verbose", action="store_true")
    invoke.set_defaults(handler=cmd_invoke)

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

        sys.stdout = LineAtomicStream(sys.stdout)
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
