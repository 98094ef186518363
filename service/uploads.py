"""Checks of uploaded photos and latents, done in the API so that bad input is a 4xx, not a failed job.

The API never imports torch: photos are decoded with PIL (the worker decodes them again with
`models.align.load_image`), latents are read with numpy's `allow_pickle=False`.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import ApiError
from service.schemas import MAX_LATENT_VALUES

# Upload format -> file extension of the stored photo. PIL names a JPEG that carries a multi-picture
# (MPF) segment, as many cameras and phones write, MPO; its first picture is the photo.
PHOTO_FORMATS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp"}
# Formats recognised only to be refused with 415; no other PIL plugin ever parses an upload.
SNIFFED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
MAX_LATENT_ABS = 1e4  # Largest |value| accepted in a latent; real ones lie within a few tens of zero.


def check_photo(data: bytes, *, max_pixels: int) -> str:
    """Decode a photo completely to prove it is usable; return its file extension.

    The pixel count is read from the header before anything is decoded, so a decompression bomb is
    refused without allocating it.

    Raises:
        ApiError: 422 `empty_file`, 415 `unsupported_image_format`, 422 `image_too_large` or
            422 `image_undecodable`.
    """
    if not data:
        raise ApiError(422, "empty_file", "the uploaded image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=SNIFFED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ApiError(422, "image_too_large", str(exc)) from None
    except UnidentifiedImageError:  # Its message names a Python object: not for clients.
        raise ApiError(422, "image_undecodable", "not a readable image: no PNG, JPEG or WebP data") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ...
        raise ApiError(422, "image_undecodable", f"not a readable image: {exc}") from None
    with opened as im:
        kind = im.format or "unknown"
        if kind not in PHOTO_FORMATS:
            raise ApiError(415, "unsupported_image_format", f"images must be PNG, JPEG or WebP, got {kind}")
        width, height = im.size
        if width * height > max_pixels:
            raise ApiError(
                422,
                "image_too_large",
                f"image is {width}x{height} = {width * height} pixels, the limit is {max_pixels}",
            )
        if width < 8 or height < 8:
            raise ApiError(422, "image_too_small", f"image is {width}x{height}, at least 8x8 is needed")
        try:
            im.load()  # PIL's default refuses truncated data (ImageFile.LOAD_TRUNCATED_IMAGES)
        except Exception as exc:
            raise ApiError(422, "image_undecodable", f"the image data is damaged: {exc}") from None
    return PHOTO_FORMATS[kind]


def read_npy(data: bytes) -> np.ndarray:
    """A `.npy` file's array, read with `allow_pickle=False` and its size checked from the header.

    Raises:
        ApiError: 422 `empty_file` or `invalid_latent_file`.
    """
    if not data:
        raise ApiError(422, "empty_file", "the uploaded latent is empty (0 bytes)")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version} is not accepted")
        if dtype.hasobject:
            raise ValueError("object arrays (pickles) are not accepted")
        if int(np.prod(shape, dtype=np.int64)) > MAX_LATENT_VALUES:
            raise ValueError(f"{list(shape)} holds more than {MAX_LATENT_VALUES} values")
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # ValueError, EOFError, OSError, ...
        raise ApiError(422, "invalid_latent_file", f"not a usable .npy array: {exc}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise ApiError(422, "invalid_latent_file", f"the latent must be numeric, got {array.dtype}")
    return array


def check_latent(values: Any, *, w_dim: int, num_ws: int) -> np.ndarray:
    """One face's latent as float32 `[1, w_dim]` or `[1, num_ws, w_dim]`.

    Accepted shapes: `[w_dim]`, `[1, w_dim]`, `[num_ws, w_dim]` and `[1, num_ws, w_dim]`.

    Raises:
        ApiError: 422 `invalid_latent_shape` or `invalid_latent_values` (NaN, infinite, or with
            |value| > `MAX_LATENT_ABS`).
    """
    try:
        array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise ApiError(422, "invalid_latent_shape", f"the latent is not a rectangular array: {exc}") from None
    shape = list(array.shape)
    if shape == [w_dim] or shape == [1, w_dim]:
        array = array.reshape(1, w_dim)
    elif shape == [num_ws, w_dim] or shape == [1, num_ws, w_dim]:
        array = array.reshape(1, num_ws, w_dim)
    else:
        raise ApiError(
            422,
            "invalid_latent_shape",
            f"the latent must have shape [{w_dim}], [1, {w_dim}], [{num_ws}, {w_dim}] or "
            f"[1, {num_ws}, {w_dim}], got {shape}",
            detail={"shape": shape, "w_dim": w_dim, "num_ws": num_ws},
        )
    if not np.isfinite(array).all():
        raise ApiError(422, "invalid_latent_values", "the latent holds NaN or infinite values")
    if (np.abs(array) > MAX_LATENT_ABS).any():
        raise ApiError(
            422,
            "invalid_latent_values",
            f"the latent holds values beyond ±{MAX_LATENT_ABS:g}: "
            f"every |value| must be at most {MAX_LATENT_ABS:g}",
        )
    return array


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` as `.npy` file bytes."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
