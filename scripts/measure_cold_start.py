"""The API function's cold init against the plain stack every powertools API on Step Functions pays.

Lambda's init phase imports the handler's module. This script does the same in fresh processes
(so nothing is cached in memory between runs) and times it, for:

- ``plain``: boto3, one Step Functions client, ``APIGatewayRestResolver(enable_validation=True)``,
  powertools ``Logger``/``Tracer``/``Metrics`` and one pydantic model: the floor such a function
  cannot go under;
- ``api``: ``functions/api/app.py``, with the layer on ``sys.path`` and the environment the
  template gives the function;
- every other function of ``functions/``, to show each pays only for what it uses.

It prints the median and spread of ``--runs`` runs each, and ``api`` minus ``plain``.

    .venv/bin/python scripts/measure_cold_start.py [--runs 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

PLAIN_STACK = """
import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from pydantic import BaseModel

logger = Logger()
tracer = Tracer()
metrics = Metrics()
sfn = boto3.client("stepfunctions")
app = APIGatewayRestResolver(enable_validation=True)


class Request(BaseModel):
    prompt: str


@app.post("/generate")
def submit(request: Request) -> dict:
    return {"prompt": request.prompt}
"""

# What the Lambda service and the template put in every function's environment, locally.
ENVIRONMENT = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_LAMBDA_FUNCTION_NAME": "cold-start",
    "POWERTOOLS_SERVICE_NAME": "imagegen",
    "POWERTOOLS_METRICS_NAMESPACE": "ImageGen",
    "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:imagegen",
    "IMAGES_BUCKET": "imagegen-images",
    "EVENT_BUS_NAME": "imagegen-bus",
    "GPU_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/gpu",
    "JOBS_TABLE_NAME": "imagegen-jobs",
}

# Runs in the fresh process: time the import of one module, the way Lambda's init does.
TIMER = """
import importlib.util, sys, time
path, name = sys.argv[1], sys.argv[2]
started = time.perf_counter()
spec = importlib.util.spec_from_file_location(name, path)
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
print(f"{time.perf_counter() - started:.6f}")
"""


def time_import(path: Path, runs: int) -> list[float]:
    environment = {**os.environ, **ENVIRONMENT}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT / "layers/common"), str(path.parent)]
    )
    seconds = []
    for _ in range(runs):
        answer = subprocess.run(  # noqa: S603 (our own interpreter on our own files)
            [sys.executable, "-c", TIMER, str(path), "handler_module"],
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        )
        seconds.append(float(answer.stdout.strip().splitlines()[-1]))
    return seconds


def describe(label: str, seconds: list[float]) -> str:
    return (
        f"{label:<26} median {statistics.median(seconds) * 1000:7.1f} ms   "
        f"min {min(seconds) * 1000:7.1f}   max {max(seconds) * 1000:7.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)

    plain_path = REPO_ROOT / "build" / "cold_start_plain_stack.py"
    plain_path.parent.mkdir(exist_ok=True)
    plain_path.write_text(PLAIN_STACK)
    api_path = REPO_ROOT / "functions/api/app.py"
    time_import(plain_path, 1)  # warm the OS file cache for both sides alike
    time_import(api_path, 1)
    # Alternate the two, so that whatever else the machine does weighs on both alike.
    plain: list[float] = []
    api: list[float] = []
    for _ in range(args.runs):
        plain += time_import(plain_path, 1)
        api += time_import(api_path, 1)
    print(f"cold init, {args.runs} fresh processes each (Python {sys.version.split()[0]})")
    print(describe("plain powertools stack", plain))
    print(describe("ApiFunction", api))
    difference = statistics.median(api) - statistics.median(plain)
    print(f"{'ApiFunction - plain':<26} {difference * 1000:+7.1f} ms (target: at most +50 ms)")
    for function in sorted((REPO_ROOT / "functions").iterdir()):
        if function.name != "api" and (function / "app.py").is_file():
            print(describe(function.name, time_import(function / "app.py", args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
