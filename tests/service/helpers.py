"""Inputs for the service tests: photos, latents and broken files, made in memory."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
from PIL import Image


def png_bytes(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def encode(picture: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format=fmt)
    return buffer.getvalue()


def noise_png(size: int = 64, seed: int = 0) -> bytes:
    picture = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return png_bytes(picture)


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A small PNG whose header declares `width x height` pixels (the IHDR rewritten, CRC fixed)."""
    data = bytearray(png_bytes(np.zeros((8, 8), dtype=np.uint8)))
    ihdr = 8  # after the signature: length (4), type (4), data (13), crc (4)
    assert data[ihdr + 4 : ihdr + 8] == b"IHDR"
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def pickled_npy() -> bytes:
    """A `.npy` of an object array: loading it with pickles allowed would run `pickle.loads`."""
    return npy(np.array([{"x": 1}, None], dtype=object), allow_pickle=True)


def raw_pickle() -> bytes:
    return pickle.dumps({"a": 1})
