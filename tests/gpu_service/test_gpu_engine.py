"""The engine on the tiny random-weight model (its images are noise): sizes, seeds, batches."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpu_service.engine import Engine
from gpu_service.image_specs import DenoisingStep, ImageSpec, plan_batches
from gpu_service.settings import Settings
from gpu_service.tiny_model import SD15_ARCHITECTURE, build_random_pipeline, ensure_tiny_model


def _decode(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _spec(seed: int, prompt: str = "a lighthouse", **size: int) -> ImageSpec:
    return ImageSpec(
        prompt=prompt,
        seed=seed,
        width=size.get("width", 64),
        height=size.get("height", 64),
        steps=2,
        guidance=0.0,
    )


def test_tiny_model_is_saved_with_pretrained_layout_and_rebuilt_only_when_missing(
    tiny_model_dir: Path,
) -> None:
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    before = (tiny_model_dir / "unet").stat().st_mtime_ns
    assert ensure_tiny_model(tiny_model_dir) == tiny_model_dir
    assert (tiny_model_dir / "unet").stat().st_mtime_ns == before


def test_the_benchmarks_architecture_is_sd15s() -> None:
    # On the meta device: the shapes without the memory or the time of a billion parameters.
    pipeline = build_random_pipeline(SD15_ARCHITECTURE, device="meta")
    parameters = {
        name: sum(tensor.numel() for tensor in getattr(pipeline, name).parameters())
        for name in ("unet", "vae", "text_encoder")
    }
    assert parameters == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert type(pipeline.scheduler).__name__ == "PNDMScheduler"


def test_loaded_engine_uses_cpu_float32_and_the_saved_pipeline(engine: Engine) -> None:
    assert engine.device == "cpu"
    assert str(engine.dtype) == "torch.float32"
    assert type(engine.pipeline).__name__ == "StableDiffusionPipeline"
    assert len(engine.pipeline.tokenizer) > 500  # our byte-level vocabulary, not a 2-token stub


@pytest.mark.parametrize(("width", "height"), [(64, 64), (128, 64), (64, 96)])
def test_returns_decodable_pngs_of_the_requested_size(
    engine: Engine, width: int, height: int
) -> None:
    [png] = engine.generate([_spec(1, width=width, height=height)])
    image = _decode(png)
    assert image.size == (width, height)
    assert image.mode == "RGB"


def test_same_seed_gives_same_image_and_another_seed_another(engine: Engine) -> None:
    first = np.asarray(_decode(engine.generate([_spec(42)])[0]))
    again = np.asarray(_decode(engine.generate([_spec(42)])[0]))
    other = np.asarray(_decode(engine.generate([_spec(43)])[0]))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_batch_of_n_returns_n_images_in_order(engine: Engine) -> None:
    seeds = [7, 8, 9, 10]
    batch = [np.asarray(_decode(png)) for png in engine.generate([_spec(s) for s in seeds])]
    alone = [np.asarray(_decode(engine.generate([_spec(s)])[0])) for s in seeds]
    assert len(batch) == len(seeds)
    for index, image in enumerate(batch):
        # Each batch item matches its own seed's image made alone (within float reordering),
        # and is further from every other seed's image: the order is kept.
        distances = [np.abs(image.astype(int) - other.astype(int)).mean() for other in alone]
        assert int(np.argmin(distances)) == index
        assert distances[index] <= 2.0


def test_batch_with_mixed_sizes_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="share"):
        engine.generate([_spec(1), _spec(2, width=128)])
    with pytest.raises(ValueError, match="share"):
        asyncio.run(engine.generate_async([_spec(1), _spec(2, width=128)]))


def test_generate_async_gives_what_generate_gives(engine: Engine) -> None:
    specs = [_spec(21), _spec(22, prompt="a harbour")]
    assert asyncio.run(engine.generate_async(specs)) == engine.generate(specs)
    assert asyncio.run(engine.generate_async([])) == []


def test_unknown_scheduler_name_is_refused(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="SCHEDULER='NoSuchScheduler'"):
        Engine.load(make_settings(scheduler="NoSuchScheduler"))


def test_configured_scheduler_replaces_the_models(make_settings: Callable[..., Settings]) -> None:
    engine = Engine.load(make_settings(scheduler="DDIMScheduler"))
    assert type(engine.pipeline.scheduler).__name__ == "DDIMScheduler"
    assert _decode(engine.generate([_spec(3)])[0]).size == (64, 64)


def test_plan_batches_groups_compatible_items_in_order_up_to_max() -> None:
    items = [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 5), ("a", 6)]
    batches = plan_batches(items, key=lambda item: item[0], max_batch=2)
    assert batches == [[("a", 1), ("a", 3)], [("a", 4), ("a", 6)], [("b", 2), ("b", 5)]]


def test_an_observer_sees_every_denoising_step_of_a_call(engine: Engine) -> None:
    seen: list[DenoisingStep] = []
    engine.generate([_spec(1), _spec(2)], on_step=seen.append)
    assert seen == [DenoisingStep(1, 2), DenoisingStep(2, 2)]


def test_an_observer_that_raises_does_not_break_generation(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[DenoisingStep] = []

    def broken(step: DenoisingStep) -> None:
        calls.append(step)
        raise RuntimeError("observer broke (test)")

    observed = engine.generate([_spec(7), _spec(8)], on_step=broken)
    plain = engine.generate([_spec(7), _spec(8)])
    assert len(calls) == 2  # called at every step, although it raised at the first
    assert all(  # the same images as without an observer
        np.array_equal(np.asarray(_decode(a)), np.asarray(_decode(b)))
        for a, b in zip(observed, plain, strict=True)
    )
    assert caplog.text.count("a step observer failed") == 1


def test_every_scheduler_a_request_may_choose_is_a_diffusers_scheduler() -> None:
    import diffusers

    from gpu_service.schedulers import SCHEDULER_CLASSES
    from imagegen_common.models import Scheduler

    assert set(SCHEDULER_CLASSES) == set(Scheduler) - {Scheduler.DEFAULT}
    for name in SCHEDULER_CLASSES.values():
        assert issubclass(getattr(diffusers, name), diffusers.SchedulerMixin)


def test_a_call_runs_with_its_own_scheduler_and_the_next_with_the_models(engine: Engine) -> None:
    own = type(engine.pipeline.scheduler).__name__
    plain = engine.generate([_spec(5)])[0]
    ancestral_spec = ImageSpec("a lighthouse", 5, 64, 64, 2, 0.0, scheduler="euler_ancestral")

    ancestral = engine.generate([ancestral_spec])[0]

    assert type(engine.pipeline.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert ancestral_spec.batch_key != _spec(5).batch_key  # never in one call with the others
    assert np.abs(_pixels(ancestral) - _pixels(plain)).max() > 0
    assert engine.generate([_spec(5)])[0] == plain  # back to the model's own
    assert type(engine.pipeline.scheduler).__name__ == own


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(_decode(png), dtype=np.int16)
