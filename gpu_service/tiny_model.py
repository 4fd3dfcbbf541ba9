"""A tiny random-weight Stable Diffusion pipeline, built on the machine instead of downloaded.

It has the real pipeline's classes (UNet2DConditionModel, AutoencoderKL with the usual 8x latent
scale, a CLIP text encoder and a CLIP tokenizer whose files this module writes itself) and is
saved with ``save_pretrained``, so tests and the offline demo load it exactly as production loads
a hub model: ``from_pretrained(path)``. Its weights are random: every image it makes is noise.

    python -m gpu_service.tiny_model [PATH]      # default .tiny-model/ at the repository root
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_TINY_MODEL_DIR = Path(__file__).resolve().parent.parent / ".tiny-model"
_MARKER = "model_index.json"
_TEXT_HIDDEN = 32


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


def build_tiny_pipeline(workdir: Path) -> object:
    """The tiny pipeline in memory (random weights, seeded, so two builds are identical)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab_size = write_tokenizer_files(workdir)
    tokenizer = CLIPTokenizer.from_pretrained(str(workdir), model_max_length=77)
    if len(tokenizer) < vocab_size:
        raise RuntimeError(f"tokenizer read {len(tokenizer)} tokens of {vocab_size}")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=_TEXT_HIDDEN,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=_TEXT_HIDDEN,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    # Four blocks, as in SD: latents are 1/8 of the image, so sizes behave as in production.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    # sd-turbo's scheduler settings, the service's default model.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
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
    concurrent builder never leaves a half-written model that a later call would accept.
    """
    target = Path(path)
    if (target / _MARKER).is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-model-build-", dir=target.parent))
    try:
        pipeline = build_tiny_pipeline(staging / "tokenizer-src")
        pipeline.save_pretrained(str(staging / "model"))  # type: ignore[attr-defined]
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
