"""FFHQ alignment, decoding and paste-back on the scikit-image astronaut and synthetic files."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.align import (
    AlignResult,
    ImageDecodeError,
    NoFaceFound,
    align_face,
    align_largest_face,
    detect_landmarks,
    face_recognition_models_predictor_path,
    load_dlib_models,
    load_image,
    paste_back,
)

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")

OUTPUT_SIZE = 256


@pytest.fixture(scope="module")
def dlib_models() -> tuple[Any, Any]:
    """The HOG detector and the 68-point predictor, loaded once (about 0.7 s)."""
    try:
        path = face_recognition_models_predictor_path()
    except FileNotFoundError:
        pytest.skip("face-recognition-models is not installed")
    return load_dlib_models(path)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """`[512, 512, 3]` uint8 photo with one frontal face."""
    return skimage_data.astronaut()


def _key_points(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eye centres and the midpoint of the outer mouth corners, as the FFHQ quad uses them."""
    return lm[36:42].mean(axis=0), lm[42:48].mean(axis=0), (lm[48] + lm[54]) * 0.5


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------
# Alignment.


def _check_ffhq_template(
    result: AlignResult, dlib_models: tuple[Any, Any], *, tol_px: float, exact_px: float = 1e-6
) -> None:
    """Assert that the face sits where the FFHQ construction puts it in the aligned square.

    By construction, with `S` the output size and pixel centres at integers: the point
    `eye_avg + 0.1 eye_to_mouth` lands on the centre `(S - 1) / 2`; the quad's x axis
    `eye_to_eye - rot90(eye_to_mouth)` is horizontal; and `max(4 |eye_to_eye|, 3.6 |eye_to_mouth|) = S`.
    For a frontal face (mouth below the eye midpoint) that puts the eyes at `x = 3S/8 - 1/2` and
    `5S/8 - 1/2` on one row and the mouth at `x = S/2 - 1/2`.

    `exact_px` bounds the centre check on mapped landmarks: float precision, except after FFHQ's shrink,
    which keeps index coordinates `u / shrink` while PIL's resize maps `u` to `(u + 0.5) / shrink - 0.5`,
    moving the face by `(shrink - 1) / 2` original pixels.
    """
    size = result.output_size
    centre = (size - 1) / 2

    # The transform itself: the original landmarks mapped into the square, exact to float precision.
    eye_left, eye_right, mouth = _key_points(result.to_aligned(result.landmarks))
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye, eye_to_mouth = eye_right - eye_left, mouth - eye_avg
    np.testing.assert_allclose(eye_avg + 0.1 * eye_to_mouth, [centre, centre], atol=exact_px)
    x_axis = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    assert abs(x_axis[1]) < 1e-6 * abs(x_axis[0])
    scale = max(4 * np.hypot(*eye_to_eye), 3.6 * np.hypot(*eye_to_mouth))
    assert scale == pytest.approx(size, rel=1e-6)

    # The pixels: landmarks re-detected on the aligned picture sit on the template.
    found = detect_landmarks(result.image, detector=dlib_models[0], predictor=dlib_models[1])
    assert len(found) == 1
    eye_left, eye_right, mouth = _key_points(found[0])
    assert abs(eye_left[0] - (3 * size / 8 - 0.5)) < tol_px
    assert abs(eye_right[0] - (5 * size / 8 - 0.5)) < tol_px
    assert abs(eye_left[1] - eye_right[1]) < tol_px
    assert abs(mouth[0] - centre) < tol_px
    eye_avg = (eye_left + eye_right) / 2
    np.testing.assert_allclose(eye_avg + 0.1 * (mouth - eye_avg), [centre, centre], atol=tol_px)
    # And all 68 agree with the mapped originals on average.
    mapped = result.to_aligned(result.landmarks)
    assert np.linalg.norm(found[0] - mapped, axis=1).mean() < tol_px


def test_astronaut_aligns_to_ffhq_template(dlib_models: tuple[Any, Any], astronaut: np.ndarray) -> None:
    result, faces_found = align_largest_face(
        astronaut, detector=dlib_models[0], predictor=dlib_models[1], output_size=OUTPUT_SIZE
    )
    assert faces_found == 1
    assert result.image.shape == (OUTPUT_SIZE, OUTPUT_SIZE, 3) and result.image.dtype == np.uint8
    assert result.quad.shape == (4, 2)
    _check_ffhq_template(result, dlib_models, tol_px=3.0)


@pytest.mark.parametrize("case", ["shrink", "padding"])
def test_alignment_with_shrink_and_padding(
    dlib_models: tuple[Any, Any], astronaut: np.ndarray, case: str
) -> None:
    if case == "shrink":
        # qsize is about 520 px at 3x, so output 128 shrinks the photo by 2 first.
        image, output_size, exact_px = _resize(astronaut, 3 * 512), 128, 0.2
    else:
        # The quad leaves the photo at the top and left: reflect padding fills it.
        image, output_size, exact_px = np.ascontiguousarray(astronaut[60:, 150:]), OUTPUT_SIZE, 1e-6
    result, _ = align_largest_face(
        image, detector=dlib_models[0], predictor=dlib_models[1], output_size=output_size
    )
    assert result.image.shape == (output_size, output_size, 3)
    _check_ffhq_template(result, dlib_models, tol_px=3.0 * output_size / OUTPUT_SIZE + 0.5, exact_px=exact_px)


def test_transform_size_defaults_to_four_times_output(
    astronaut: np.ndarray, dlib_models: tuple[Any, Any]
) -> None:
    (lm,) = detect_landmarks(astronaut, detector=dlib_models[0], predictor=dlib_models[1])
    default = align_face(astronaut, lm, output_size=64)
    explicit = align_face(astronaut, lm, output_size=64, transform_size=256)
    np.testing.assert_array_equal(default.image, explicit.image)
    np.testing.assert_allclose(default.quad, explicit.quad)


def test_noise_has_no_face(dlib_models: tuple[Any, Any]) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    with pytest.raises(NoFaceFound):
        align_largest_face(noise, detector=dlib_models[0], predictor=dlib_models[1], output_size=OUTPUT_SIZE)


def test_two_faces_align_the_larger(dlib_models: tuple[Any, Any], astronaut: np.ndarray) -> None:
    # The head only: the full photo at some scales has false detections on the suit.
    head = np.ascontiguousarray(astronaut[:256, 96:352])
    canvas = np.full((512, 768, 3), 200, dtype=np.uint8)
    canvas[128:384, :256] = head  # Small face, left.
    canvas[:, 256:] = _resize(head, 512)  # Large face, right.
    result, faces_found = align_largest_face(
        canvas, detector=dlib_models[0], predictor=dlib_models[1], output_size=OUTPUT_SIZE
    )
    assert faces_found == 2
    assert result.quad[:, 0].min() > 256
    small, _ = align_largest_face(
        head, detector=dlib_models[0], predictor=dlib_models[1], output_size=OUTPUT_SIZE
    )
    side = np.hypot(*(result.quad[3] - result.quad[0]))
    assert side == pytest.approx(2 * np.hypot(*(small.quad[3] - small.quad[0])), rel=0.1)


# ----------------------------------------------------------------------------
# Decoding.


def _encode(im: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_exif_orientation_is_honoured() -> None:
    # 40 x 60 picture: red on the left half, blue on the right half.
    pixels = np.zeros((60, 40, 3), dtype=np.uint8)
    pixels[:, :20] = [255, 0, 0]
    pixels[:, 20:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
    data = _encode(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)

    decoded = load_image(data)
    assert decoded.shape == (40, 60, 3) and decoded.dtype == np.uint8
    # Clockwise rotation puts the left half (red) on top.
    expected = np.rot90(pixels, k=-1)
    assert np.abs(decoded.astype(int) - expected).mean() < 10
    assert decoded[5, 30, 0] > 200 and decoded[35, 30, 2] > 200


def test_file_object_is_accepted() -> None:
    data = _encode(Image.new("RGB", (8, 6), (10, 20, 30)), "PNG")
    decoded = load_image(io.BytesIO(data))
    assert decoded.shape == (6, 8, 3)
    assert (decoded == [10, 20, 30]).all()


def _palette_image() -> Image.Image:
    im = Image.new("P", (8, 6))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (0, 0, 4, 6))
    return im


@pytest.mark.parametrize(
    ("make", "expected_left", "expected_right"),
    [
        (lambda: Image.new("L", (8, 6), 77), [77, 77, 77], [77, 77, 77]),
        (lambda: Image.new("1", (8, 6), 1), [255, 255, 255], [255, 255, 255]),
        (_palette_image, [0, 255, 0], [255, 0, 0]),
        # Half-transparent black over white gives mid-grey; fully transparent gives white.
        (lambda: Image.fromarray(_rgba_halves()), [128, 128, 128], [255, 255, 255]),
        (lambda: Image.fromarray(_rgba_halves()).convert("LA"), [128, 128, 128], [255, 255, 255]),
    ],
    ids=["L", "1", "P", "RGBA", "LA"],
)
def test_modes_decode_to_rgb(make: Any, expected_left: list[int], expected_right: list[int]) -> None:
    decoded = load_image(_encode(make(), "PNG"))
    assert decoded.shape == (6, 8, 3) and decoded.dtype == np.uint8
    np.testing.assert_allclose(decoded[3, 1], expected_left, atol=1)
    np.testing.assert_allclose(decoded[3, 6], expected_right, atol=1)


def _rgba_halves() -> np.ndarray:
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[:, :4, 3] = 128
    return rgba


def test_palette_with_transparency_composites_on_white() -> None:
    im = _palette_image()
    decoded = load_image(_encode(im, "PNG", transparency=0))  # Index 0 (red, the right half) transparent.
    np.testing.assert_array_equal(decoded[3, 6], [255, 255, 255])
    np.testing.assert_array_equal(decoded[3, 1], [0, 255, 0])


def test_sixteen_bit_png_scales_down() -> None:
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16).repeat(4, axis=0)  # [4, 3]
    im = Image.fromarray(values)
    assert im.mode.startswith("I;16")
    data = _encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I;16B", "I")
    decoded = load_image(data)
    assert decoded.shape == (4, 3, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded[0, :, 0], [0, 128, 255])


def test_cmyk_decodes_to_rgb() -> None:
    im = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # Red.
    decoded = load_image(_encode(im, "TIFF"))
    assert decoded.shape == (6, 8, 3)
    np.testing.assert_allclose(decoded[3, 3], [255, 0, 0], atol=2)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width x height` RGB pixels but holds no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [12_000, 100_000])
def test_bomb_is_refused_without_allocating(side: int) -> None:
    data = _png_header_only(side, side)
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match="too large|decompression bomb|exceeds limit"):
            load_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


def test_small_limit_is_enforced() -> None:
    data = _encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(data, max_pixels=99 * 100)
    assert load_image(data, max_pixels=100 * 100).shape == (100, 100, 3)


def test_garbage_is_refused() -> None:
    with pytest.raises(ImageDecodeError):
        load_image(b"not an image")


# ----------------------------------------------------------------------------
# Paste back.


def test_paste_back(dlib_models: tuple[Any, Any], astronaut: np.ndarray) -> None:
    result, _ = align_largest_face(
        astronaut, detector=dlib_models[0], predictor=dlib_models[1], output_size=OUTPUT_SIZE
    )
    x0, y0 = np.floor(result.quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(result.quad.max(axis=0)).astype(int)
    outside = np.ones(astronaut.shape[:2], dtype=bool)
    outside[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = False
    face_y, face_x = np.round(result.to_original(np.array([[127.5, 127.5]]))[0, ::-1]).astype(int)

    # Pasting the unedited face back changes little.
    same = paste_back(astronaut, result.image, result)
    assert same.shape == astronaut.shape and same.dtype == np.uint8
    assert np.abs(same.astype(int) - astronaut)[~outside].mean() < 3

    # An edited face shows inside the quad and nowhere else.
    edited = 255 - result.image
    pasted = paste_back(astronaut, edited, result)
    assert pasted.shape == astronaut.shape
    np.testing.assert_array_equal(pasted[outside], astronaut[outside])
    np.testing.assert_allclose(pasted[face_y, face_x], 255 - astronaut[face_y, face_x].astype(int), atol=12)
    assert np.abs(pasted.astype(int) - astronaut)[~outside].mean() > 30

    # An edited face at another resolution is resampled to the same place.
    pasted_big = paste_back(astronaut, _resize(edited, 2 * OUTPUT_SIZE), result)
    assert np.abs(pasted_big.astype(int) - pasted).mean() < 3
