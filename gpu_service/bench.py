"""Throughput benchmark of the engine: the original design's naive baseline against ours.

Default (for a GPU machine): a Stable Diffusion 1.5-architecture pipeline with random weights,
built from its configuration (no download; the arithmetic is that of the real model), at 512x512,
50 steps, guidance 7.5. Scenarios:

- naive: float32, one request at a time (the plain FastAPI design);
- ours: float16 + SDPA, batches of ``--batch``; and the same with ``torch.compile``;
- server: ours through the server's MicroBatcher with ``--concurrency`` clients (no HTTP);
- worker path: the queue worker's whole pipeline (``gpu_service.path_bench``: receive, the
  engine, PNG encoding, S3 puts, task answers, deletes) on the same engine, SQS, S3 and Step
  Functions in memory with ``--worker-latency-ms`` per call, in rounds that alternate with the
  engine alone; the row gives the worker's images/s and its ratio to the engine's.

Reports images/s, p50/p95 latency per image (a batched image waits for its whole batch), peak GPU
memory, and FLOP per image counted with ``torch.utils.flop_counter`` (achieved TFLOP/s and the
share of the GPU's bound when ``--peak-tflops`` is given).

``--tiny`` runs the same scenarios on the tiny random-weight model (images are noise) at small
settings, on the CPU if that is all there is: it exercises the code, its figures say nothing
about a GPU. ``--output docs/benchmarks.md`` writes the table there (replacing the block of the
same profile). Never part of the tests, nor of the runtime image (run it from the repository).

    python -m gpu_service.bench --output docs/benchmarks.md            # on a GPU
    python -m gpu_service.bench --tiny --output docs/benchmarks.md     # anywhere
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from gpu_service.batching import MicroBatcher
from gpu_service.engine import Engine
from gpu_service.image_specs import ImageSpec
from gpu_service.path_bench import BUCKET, MemoryBacking, measure
from gpu_service.settings import Settings
from gpu_service.tiny_model import SD15_ARCHITECTURE, build_random_pipeline, ensure_tiny_model


@dataclass(frozen=True)
class Profile:
    name: str
    width: int
    height: int
    steps: int
    guidance: float
    naive_images: int
    batched_images: int


SD15 = Profile("sd15", 512, 512, 50, 7.5, naive_images=16, batched_images=32)
TINY = Profile("tiny", 128, 128, 10, 7.5, naive_images=8, batched_images=32)


@dataclass
class Row:
    scenario: str
    dtype: str
    batch: str
    compiled: bool
    images: int
    seconds: float
    latencies: list[float]
    peak_memory: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def _specs(profile: Profile, count: int, offset: int = 0) -> list[ImageSpec]:
    return [
        ImageSpec(
            prompt=f"a lighthouse on a cliff, study {offset + i}",
            negative_prompt="blurry",
            seed=offset + i,
            width=profile.width,
            height=profile.height,
            steps=profile.steps,
            guidance=profile.guidance,
        )
        for i in range(count)
    ]


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> int:
    if device != "cuda":
        return 0
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def run_direct(
    engine: Engine, profile: Profile, *, label: str, batch: int, images: int, warmups: int
) -> Row:
    """``images`` images in engine calls of ``batch``, one call after another."""
    for _ in range(warmups):
        engine.generate(_specs(profile, batch, offset=10_000))
    _reset_peak(engine.device)
    latencies: list[float] = []
    started = time.perf_counter()
    for first in range(0, images, batch):
        call_started = time.perf_counter()
        pngs = engine.generate(_specs(profile, min(batch, images - first), offset=first))
        latencies += [time.perf_counter() - call_started] * len(pngs)
    seconds = time.perf_counter() - started
    return Row(
        label,
        str(engine.dtype).removeprefix("torch."),
        str(batch),
        _compiled(engine),
        images,
        seconds,
        latencies,
        _peak(engine.device),
    )


async def _serve(
    engine: Engine, profile: Profile, *, max_batch: int, concurrency: int, images: int
) -> tuple[float, list[float], list[int]]:
    batcher = MicroBatcher(
        engine.generate_async, max_batch=max_batch, max_wait=0.01, max_queue=10_000
    )
    batcher.start()
    specs = iter(_specs(profile, images))
    latencies: list[float] = []

    async def client() -> None:
        for spec in specs:
            sent = time.perf_counter()
            await batcher.submit(spec)
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    sizes = [record.size for record in batcher.batches]
    await batcher.stop()
    return seconds, latencies, sizes


def run_server(
    engine: Engine, profile: Profile, *, max_batch: int, concurrency: int, images: int
) -> Row:
    engine.generate(_specs(profile, max_batch, offset=10_000))  # warm (and compile) this shape
    _reset_peak(engine.device)
    seconds, latencies, sizes = asyncio.run(
        _serve(engine, profile, max_batch=max_batch, concurrency=concurrency, images=images)
    )
    mean_batch = statistics.fmean(sizes) if sizes else 0.0
    return Row(
        f"server, {concurrency} concurrent clients",
        str(engine.dtype).removeprefix("torch."),
        f"≤{max_batch} (mean {mean_batch:.1f})",
        _compiled(engine),
        images,
        seconds,
        latencies,
        _peak(engine.device),
    )


def run_worker_path(
    engine: Engine, profile: Profile, *, max_batch: int, images: int, latency_ms: float
) -> Row:
    """The worker's whole path on ``engine`` against the engine alone, three pairs of rounds."""
    settings = Settings(
        device=engine.device,
        default_width=profile.width,
        default_height=profile.height,
        default_steps=profile.steps,
        default_guidance=profile.guidance,
        max_batch=max_batch,
        gpu_queue_url="in-memory",
        images_bucket=BUCKET,
        receive_wait_seconds=1,
        progress_reporting=False,
    )
    engine.generate(_specs(profile, max_batch, offset=10_000))  # warm this shape
    _reset_peak(engine.device)
    result = measure(
        engine,
        settings,
        lambda: MemoryBacking(latency_ms / 1000),
        jobs=images,
        rounds=3,
        width=profile.width,
        height=profile.height,
    )
    steady = statistics.median(result.steady_images_per_second)
    return Row(
        f"worker path, {latency_ms:g} ms per AWS call: **{result.steady_ratio:.2f}x** the "
        f"engine alone ({statistics.median(result.engine_images_per_second):.2f} img/s)",
        str(engine.dtype).removeprefix("torch."),
        f"≤{max_batch}",
        _compiled(engine),
        images,
        images / steady,
        [],  # a job's latency is not what this row measures
        _peak(engine.device),
    )


def _compiled(engine: Engine) -> bool:
    return type(engine.pipeline.unet).__name__ == "OptimizedModule"


def flop_per_image(engine: Engine, profile: Profile) -> float:
    """Matrix-product and convolution FLOP of one image at the profile's settings, counted."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(steps: int) -> int:
        spec = ImageSpec("count", 0, profile.width, profile.height, steps, profile.guidance)
        key = spec.batch_key

        def counted() -> int:  # dispatch modes are per thread: count on the engine's
            counter = FlopCounterMode(display=False)
            with counter:
                engine._call_pipeline([spec], key)
            return int(counter.get_total_flops())

        return engine.run(counted)

    one, two = count(1), count(2)
    per_step = two - one
    return float(one + (profile.steps - 1) * per_step)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _seconds(latencies: list[float], share: float) -> str:
    return f"{_percentile(latencies, share):.2f}" if latencies else "n/a"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def render(
    profile: Profile,
    rows: list[Row],
    *,
    device: str,
    flop: float,
    peak_tflops: float | None,
    note: str,
) -> str:
    import diffusers

    lines = [
        f"### Profile `{profile.name}` on {device_name(device)}",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m gpu_service.bench"
        f"{' --tiny' if profile.name.startswith('tiny') else ''}`; torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}. {profile.width}x{profile.height}, "
        f"{profile.steps} steps, guidance {profile.guidance}. {note}",
        "",
        f"Counted arithmetic: {flop / 1e12:.4g} TFLOP per image.",
        "",
        "| scenario | dtype | batch | torch.compile | images | img/s | p50 s | p95 s "
        "| peak GPU GiB | achieved TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.scenario} | {row.dtype} | {row.batch} | {'yes' if row.compiled else 'no'} "
            f"| {row.images} | {row.images_per_second:.2f} | {_seconds(row.latencies, 0.5)} "
            f"| {_seconds(row.latencies, 0.95)} | {row.peak_memory / 2**30:.2f} "
            f"| {row.images_per_second * flop / 1e12:.3g} |"
        )
    if peak_tflops:
        bound = peak_tflops * 1e12 / flop
        best = max(rows, key=lambda row: row.images_per_second)
        lines += [
            "",
            f"Bound from the arithmetic at {peak_tflops:.0f} TFLOP/s: {bound:.2f} img/s; the best "
            f"row ({best.scenario}, {best.images_per_second:.2f} img/s) reaches "
            f"{100 * best.images_per_second / bound:.0f}% of it.",
        ]
    return "\n".join(lines) + "\n"


def write_block(path: Path, profile: str, text: str) -> None:
    """Replace this profile's block in ``path`` (between markers), or append one."""
    begin, end = f"<!-- bench:{profile}:begin -->", f"<!-- bench:{profile}:end -->"
    block = f"{begin}\n{text}{end}\n"
    current = path.read_text() if path.exists() else ""
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        path.write_text(head + block + tail)
    else:
        path.write_text(current + ("\n" if current and not current.endswith("\n") else "") + block)


def _engine(pipeline_factory: Callable[[], Any], settings: Settings) -> Engine:
    return Engine.from_pipeline(pipeline_factory(), settings, model_id="bench")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the GPU service's engine.")
    parser.add_argument("--tiny", action="store_true", help="tiny model, small settings (noise)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument(
        "--worker-latency-ms", type=float, default=20.0, help="added to each AWS call (worker)"
    )
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU's dense peak")
    parser.add_argument("--output", type=Path, default=None, help="markdown file to update")
    parser.add_argument("--note", default="", help="a sentence added under the heading")
    parser.add_argument("--size", type=int, default=None, help="override: width and height")
    parser.add_argument("--steps", type=int, default=None, help="override: denoising steps")
    parser.add_argument("--images", type=int, default=None, help="override: images per row")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # random weights in fp16 overflow into NaN pixels

    profile = TINY if args.tiny else SD15
    overrides = {
        "width": args.size,
        "height": args.size,
        "steps": args.steps,
        "naive_images": args.images,
        "batched_images": args.images,
    }
    if any(value is not None for value in overrides.values()):
        profile = dataclasses.replace(
            profile,
            name=f"{profile.name}-custom",
            **{key: value for key, value in overrides.items() if value is not None},
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fast_dtype = "float16" if device == "cuda" else "float32"
    if args.tiny:
        model_dir = ensure_tiny_model()

        def factory() -> Any:
            from diffusers import StableDiffusionPipeline

            return StableDiffusionPipeline.from_pretrained(model_dir)
    else:

        def factory() -> Any:
            return build_random_pipeline(SD15_ARCHITECTURE, device=device)

    naive_settings = Settings(device=device, dtype="float32")
    fast_settings = Settings(device=device, dtype=fast_dtype)
    rows: list[Row] = []

    naive = _engine(factory, naive_settings)
    flop = flop_per_image(naive, profile)
    rows.append(
        run_direct(naive, profile, label="naive", batch=1, images=profile.naive_images, warmups=1)
    )
    naive.close()
    del naive
    if device == "cuda":
        torch.cuda.empty_cache()

    fast = _engine(factory, fast_settings)
    rows.append(
        run_direct(fast, profile, label="ours", batch=1, images=profile.naive_images, warmups=1)
    )
    rows.append(
        run_direct(
            fast, profile, label="ours", batch=args.batch, images=profile.batched_images, warmups=1
        )
    )
    server_engine = fast
    if not args.no_compile:
        compiled = Engine.from_pipeline(
            fast.pipeline,
            fast_settings.model_copy(
                update={"torch_compile": True, "torch_compile_mode": args.compile_mode}
            ),
            model_id="bench",
        )
        rows.append(
            run_direct(
                compiled,
                profile,
                label="ours",
                batch=args.batch,
                images=profile.batched_images,
                warmups=2,
            )
        )
        server_engine = compiled
    rows.append(
        run_server(
            server_engine,
            profile,
            max_batch=args.batch,
            concurrency=args.concurrency,
            images=profile.batched_images,
        )
    )
    rows.append(
        run_worker_path(
            server_engine,
            profile,
            max_batch=args.batch,
            images=profile.batched_images,
            latency_ms=args.worker_latency_ms,
        )
    )

    note = args.note
    if args.tiny:
        note = (
            "Tiny random-weight model: images are noise; figures exercise the code only. " + note
        ).strip()
    text = render(profile, rows, device=device, flop=flop, peak_tflops=args.peak_tflops, note=note)
    print(text)
    if args.output is not None:
        write_block(args.output, f"{profile.name}-{device}", text)


if __name__ == "__main__":
    main()
