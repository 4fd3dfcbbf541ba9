"""What an image file is, read from its header alone: its format and pixel size.

Pillow's ``Image.open`` reads the header and decodes nothing until asked, so a file can be
checked (type by its bytes, not its name; pixel size; a decompression bomb's claimed size)
without the memory or time a decode takes.
"""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple

from PIL import Image

from imagegen_common.models import OutputFormat

_PILLOW_FORMATS = {"PNG": OutputFormat.PNG, "JPEG": OutputFormat.JPEG, "WEBP": OutputFormat.WEBP}


class ImageHeader(NamedTuple):
    format: OutputFormat
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_image_header(data: bytes) -> ImageHeader:
    """The format and size of a PNG, JPEG or WebP file, from its header.

    Raises ValueError for anything else (another format, a truncated or garbled header).
    """
    try:
        with warnings.catch_warnings():
            # The size is judged by the caller; Pillow's own bomb warning/error is about decode.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(_PILLOW_FORMATS)) as image:
                width, height = image.size
                found = _PILLOW_FORMATS[str(image.format)]
    except Image.DecompressionBombError:
        raise ValueError("the image claims more pixels than can be decoded safely") from None
    except (OSError, SyntaxError, KeyError, ValueError) as error:
        raise ValueError(f"not a PNG, JPEG or WebP image ({error})") from None
    if width < 1 or height < 1:
        raise ValueError(f"the image header gives an empty size {width}x{height}")
    return ImageHeader(found, width, height)
