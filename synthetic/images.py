"""Image files built byte by byte for the tests: gradients, 1-bit PNGs, JPEGs that lie about their size, sBIT chunks."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def gradient_png(width: int = 300, height: int = 200, dtype=np.uint8) -> bytes:
    peak = np.iinfo(dtype).max
    image = (np.linspace(0, 1, width)[None, :] * np.linspace(0.2, 1, height)[:, None] * peak).astype(dtype)
    return cv2.imencode(".png", image)[1].tobytes()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def one_bit_png(width: int, height: int) -> bytes:
    """A 1-bit grey PNG of zeros: each row is one filter byte and width/8 bytes, and zlib makes them almost nothing."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16), 100, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def with_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk after IHDR, as a 12-bit detector's 16-bit PNG carries."""
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    chunk = struct.pack(">I", 1) + b"sBIT" + bytes([bits])
    chunk += struct.pack(">I", zlib.crc32(b"sBIT" + bytes([bits])))
    return png[:ihdr_end] + chunk + png[ihdr_end:]
