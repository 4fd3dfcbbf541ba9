"""Reading a PNG's pixel size from its header, with the standard library only.

The format: an 8-byte signature, then chunks of ``length (4) | type (4) | data | CRC (4)``; the
first chunk must be ``IHDR``, whose data starts with width and height as big-endian unsigned
32-bit integers (PNG specification, W3C, "Portable Network Graphics (PNG) Specification",
sections 5.2 "PNG signature" and 11.2.2 "IHDR Image header").
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_LENGTH = 13
_HEADER_END = len(PNG_SIGNATURE) + 8 + _IHDR_LENGTH + 4
_MAX_DIMENSION = 2**31 - 1


def png_size(data: bytes) -> tuple[int, int]:
    """The ``(width, height)`` of a PNG image, read from its IHDR chunk.

    Raises:
        ValueError: ``data`` does not start with the PNG signature and a well-formed IHDR chunk
            (wrong signature, truncated header, bad CRC, zero or out-of-range size).
    """
    if len(data) < _HEADER_END:
        raise ValueError(f"not a PNG: {len(data)} bytes is shorter than a PNG header")
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG: the data does not start with the PNG signature")
    offset = len(PNG_SIGNATURE)
    length, chunk_type = struct.unpack(">I4s", data[offset : offset + 8])
    if chunk_type != b"IHDR" or length != _IHDR_LENGTH:
        raise ValueError(f"not a PNG: the first chunk is {chunk_type!r}, not a 13-byte IHDR")
    chunk_data = data[offset + 8 : offset + 8 + _IHDR_LENGTH]
    (crc,) = struct.unpack(">I", data[offset + 8 + _IHDR_LENGTH : _HEADER_END])
    if zlib.crc32(chunk_type + chunk_data) != crc:
        raise ValueError("not a PNG: the IHDR chunk's CRC does not match")
    width, height = struct.unpack(">II", chunk_data[:8])
    if not (0 < width <= _MAX_DIMENSION and 0 < height <= _MAX_DIMENSION):
        raise ValueError(f"not a PNG: invalid size {width}x{height} in IHDR")
    return width, height
