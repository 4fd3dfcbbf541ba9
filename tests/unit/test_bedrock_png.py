"""png_size reads the IHDR of real PNGs and refuses anything else."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from imagegen.local.fake_bedrock import make_png
from imagegen_common.png import png_size


def _pillow_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1344, 768), (640, 1536)])
def test_png_size_reads_pillow_png(width: int, height: int) -> None:
    assert png_size(_pillow_png(width, height)) == (width, height)


def test_fake_png_is_a_real_png_of_the_size_asked() -> None:
    data = make_png(96, 64, seed=7)
    assert png_size(data) == (96, 64)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (96, 64)
    assert make_png(96, 64, seed=7) == data
    assert make_png(96, 64, seed=8) != data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a" + b"\x00" * 40,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 10,
    ],
)
def test_png_size_rejects_non_png(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(data)


def test_png_size_rejects_bad_crc() -> None:
    data = bytearray(_pillow_png(8, 8))
    data[20] ^= 0xFF  # inside IHDR's width
    with pytest.raises(ValueError, match="CRC"):
        png_size(bytes(data))


def test_png_size_rejects_first_chunk_other_than_ihdr() -> None:
    data = _pillow_png(8, 8)
    tampered = data[:12] + b"IDAT" + data[16:]
    with pytest.raises(ValueError, match="IHDR"):
        png_size(tampered)


def test_png_size_rejects_zero_width() -> None:
    import zlib

    ihdr = struct.pack(">IIBBBBB", 0, 8, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(ValueError, match="invalid size"):
        png_size(b"\x89PNG\r\n\x1a\n" + chunk)
