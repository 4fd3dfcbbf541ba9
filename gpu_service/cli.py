"""Start-up shared by the service's commands (``gpu_service.server``, ``gpu_service.worker``)."""

from __future__ import annotations

import argparse
import logging

from gpu_service.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def settings_from_command_line(description: str, argv: list[str] | None) -> Settings:
    """Parse the common flags, set up logging, and return the settings to run with."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--tiny-model",
        action="store_true",
        help="build (if missing) and use the tiny random-weight model: images are noise",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    if args.tiny_model:
        try:
            from gpu_service.tiny_model import ensure_tiny_model
        except ModuleNotFoundError:  # the runtime image leaves the development modules out
            parser.error("--tiny-model runs from the repository only: the image has no tiny model")
        settings = settings.model_copy(update={"model_id": str(ensure_tiny_model())})
        logger.warning("using the tiny random-weight model: every image is noise")
    return settings
