"""Random-weight Stable Diffusion pipelines, built on the machine instead of downloaded.

One builder, two sizes of one architecture: ``TINY_ARCHITECTURE`` (what tests and the offline
demo run, saved by ``ensure_tiny_model``) and ``SD15_ARCHITECTURE`` (the benchmark's: the real
model's arithmetic). Both have the real pipeline's classes (UNet2DConditionModel, AutoencoderKL
with the usual 8x latent scale, a CLIP text encoder and a CLIP tokenizer whose files this module
writes itself); the tiny one is saved with ``save_pretrained``, so tests and the demo load it
exactly as production loads a hub model: ``from_pretrained(path)``. The weights are random:
every image is noise. Development only: the runtime image leaves this module out.

    python -m gpu_service.tiny_model [PATH]      # default .tiny-model/ at the repository root
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

DEFAULT_TINY_MODEL_DIR = Path(__file__).resolve().parent.parent / ".tiny-model"
_MARKER = "model_index.json"


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet: one printable character per byte value."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    extra = 0
    codes = []
    for byte in range(256):
        if byte in printable:
            codes.append(byte)
        else:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def write_tokenizer_files(directory: Path) -> int:
    """Write a byte-level CLIP vocabulary (vocab.json, merges.txt); returns the vocabulary size.

    Every byte has a token of its own, with and without the end-of-word mark, so any prompt
    tokenizes without unknown tokens (one token per character). transformers 5's CLIPTokenizer
    reads these files only through ``from_pretrained(directory)``.
    """
    alphabet = _bytes_to_unicode()
    tokens = [*alphabet, *(f"{char}</w>" for char in alphabet), "<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(
        json.dumps({token: index for index, token in enumerate(tokens)}, ensure_ascii=False),
        encoding="utf-8",
    )
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(tokens)


@dataclass(frozen=True)
class Architecture:
    """The sizes of a Stable Diffusion pipeline (CLIP text encoder, UNet, VAE with 8x latents)."""

    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_vocab_size: int | None
    """None: the byte-level tokenizer's own size (every token an embedding row)."""
    unet_channels: tuple[int, ...]
    unet_down_blocks: tuple[str, ...]
    unet_up_blocks: tuple[str, ...]
    unet_layers_per_block: int
    unet_sample_size: int
    vae_channels: tuple[int, int, int, int]
    vae_layers_per_block: int
    vae_norm_groups: int
    scheduler: Literal["euler-trailing", "pndm"]


TINY_ARCHITECTURE = Architecture(
    text_hidden=32,
    text_intermediate=37,
    text_layers=2,
    text_heads=4,
    text_vocab_size=None,
    unet_channels=(32, 64),
    unet_down_blocks=("DownBlock2D", "CrossAttnDownBlock2D"),
    unet_up_blocks=("CrossAttnUpBlock2D", "UpBlock2D"),
    unet_layers_per_block=1,
    unet_sample_size=8,
    vae_channels=(8, 16, 16, 16),
    vae_layers_per_block=1,
    vae_norm_groups=8,
    scheduler="euler-trailing",  # sd-turbo's, the service's default model
)
"""About 1 M parameters each for the UNet and the VAE: ~8 MB saved, a small image in a fraction
of a second on a CPU."""

SD15_ARCHITECTURE = Architecture(
    text_hidden=768,
    text_intermediate=3072,
    text_layers=12,
    text_heads=12,
    text_vocab_size=49408,
    unet_channels=(320, 640, 1280, 1280),
    unet_down_blocks=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    unet_up_blocks=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    unet_layers_per_block=2,
    unet_sample_size=64,
    vae_channels=(128, 256, 512, 512),
    vae_layers_per_block=2,
    vae_norm_groups=32,
    scheduler="pndm",
)
"""SD 1.5's (UNet 860 M, VAE 84 M, CLIP ViT-L/14 text encoder): the benchmark's arithmetic."""


def build_random_pipeline(architecture: Architecture, *, device: str = "cpu") -> Any:
    """A ``StableDiffusionPipeline`` of ``architecture`` with random weights, seeded, so two
    builds are identical. ``device``: where the weights are initialised (SD 1.5's billion
    parameters initialise much faster on a GPU)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="tokenizer-") as tokenizer_dir:
        vocab_size = write_tokenizer_files(Path(tokenizer_dir))
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)
    if len(tokenizer) < vocab_size:
        raise RuntimeError(f"tokenizer read {len(tokenizer)} tokens of {vocab_size}")
    torch.manual_seed(0)
    with torch.device(device):
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=architecture.text_vocab_size or vocab_size,
                hidden_size=architecture.text_hidden,
                intermediate_size=architecture.text_intermediate,
                num_hidden_layers=architecture.text_layers,
                num_attention_heads=architecture.text_heads,
                max_position_embeddings=77,
                projection_dim=architecture.text_hidden,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=architecture.unet_sample_size,
            in_channels=4,
            out_channels=4,
            layers_per_block=architecture.unet_layers_per_block,
            block_out_channels=architecture.unet_channels,
            down_block_types=architecture.unet_down_blocks,
            up_block_types=architecture.unet_up_blocks,
            cross_attention_dim=architecture.text_hidden,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        # Four blocks, as in SD: latents are 1/8 of the image, so sizes behave as in production.
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=architecture.vae_channels,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=architecture.vae_layers_per_block,
            norm_num_groups=architecture.vae_norm_groups,
            sample_size=architecture.unet_sample_size * 8,
        )
    betas = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    scheduler: Any
    if architecture.scheduler == "pndm":
        scheduler = PNDMScheduler(**betas, skip_prk_steps=True, steps_offset=1)
    else:
        scheduler = EulerDiscreteScheduler(
            num_train_timesteps=1000, **betas, timestep_spacing="trailing", steps_offset=1
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_tiny_model(path: Path | str = DEFAULT_TINY_MODEL_DIR, *, force: bool = False) -> Path:
    """Build the tiny model into ``path`` unless it is already there; returns ``path``.

    The build goes to a sibling temporary directory that is renamed into place, so a crash or a
    concurrent builder never leaves a half-written model that a later call would accept; and
    builders of one path take turns (a lock file beside it), so processes that start at once
    build it once: the second finds the first's.
    """
    target = Path(path)
    if (target / _MARKER).is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / _MARKER).is_file() and not force:
            return target
        return _build(target, force)


def _build(target: Path, force: bool) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=".tiny-model-build-", dir=target.parent))
    try:
        build_random_pipeline(TINY_ARCHITECTURE).save_pretrained(str(staging / "model"))
        if force and target.exists():
            shutil.rmtree(target)
        try:
            (staging / "model").rename(target)
        except OSError:
            if not (target / _MARKER).is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built tiny random-weight model (images are noise) at %s", target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_TINY_MODEL_DIR))
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    ensure_tiny_model(args.path, force=args.force)


if __name__ == "__main__":
    main()
