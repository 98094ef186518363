"""FFHQ face alignment: decode a photo, find 68 dlib landmarks, crop the oriented face square, paste back.

The alignment follows NVlabs/ffhq-dataset `download_ffhq.py` (`recreate_aligned_images`) step by step:
an oriented quad from the eye centres and the mouth corners, shrink for large inputs, crop, reflect-pad
with blur and median fade, then PIL's quad transform at `transform_size` and a Lanczos resize to
`output_size`. The result keeps the quad in original-image coordinates, so `paste_back` can warp an
edited face into the original photo.

No files are chosen here: the caller passes image bytes (or an open file) and the dlib objects, built by
`load_dlib_models(predictor_path)` from a path the caller picks. `face_recognition_models_predictor_path`
only locates the predictor shipped by the `face-recognition-models` package, for callers that want it.

Coordinates are pixel-index coordinates `(x, y)`: the centre of pixel `img[i, j]` is at `(j, i)`, as in
dlib's landmarks.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
import scipy.ndimage
from PIL import Image, ImageOps

__all__ = [
    "AlignResult",
    "ImageDecodeError",
    "NoFaceFound",
    "align_face",
    "align_largest_face",
    "detect_landmarks",
    "face_recognition_models_predictor_path",
    "ffhq_quad",
    "load_dlib_models",
    "load_image",
    "paste_back",
]

DEFAULT_MAX_PIXELS = 64_000_000  # Refuse decoded images larger than this (8000 x 8000).


class NoFaceFound(ValueError):
    """The detector found no face in the image (the service reports the code `no_face_found`)."""


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image, or it is larger than the allowed number of pixels."""


# ----------------------------------------------------------------------------
# Decoding.


def _assert_shape(array: np.ndarray, ref_shape: list[int | None]) -> None:
    """`models.misc.assert_shape` for numpy arrays (this module does not need torch)."""
    if array.ndim != len(ref_shape) or any(
        r is not None and s != r for s, r in zip(array.shape, ref_shape, strict=True)
    ):
        raise AssertionError(f"Wrong shape: got {tuple(array.shape)}, expected {tuple(ref_shape)}")


# Formats decoded from uploads. Others that PIL knows are refused: EPS would hand the bytes to
# Ghostscript, and exotic plugins are more attack surface than any photo needs.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


def load_image(data: bytes | IO[bytes], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into 8-bit RGB, honouring its EXIF orientation.

    Modes are converted as follows: greyscale (`1`, `L`) is replicated to three channels; palette images
    are expanded; images with alpha (`LA`, `PA`, `RGBA`, palette with transparency, ...) are composited
    on white; 16-bit greyscale (`I;16*`, and `I`, which PIL uses for 16-bit PNGs) is scaled by 255/65535
    and rounded; float (`F`) is clipped to [0, 255]; CMYK, YCbCr and the rest go through PIL's RGB
    conversion. Embedded ICC profiles are ignored.

    The pixel count is checked from the header, before any pixel is decoded, so a decompression bomb is
    refused without allocating it. PIL's global `Image.MAX_IMAGE_PIXELS` is left untouched.

    Args:
        data: The encoded file, as bytes or an open binary file object.
        max_pixels: Largest accepted `width * height`.

    Returns:
        `[H, W, 3]` `uint8` array.

    Raises:
        ImageDecodeError: The data is not an image PIL can decode, or it has more than `max_pixels`.
    """
    stream = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        with warnings.catch_warnings():
            # The pixel limit below replaces PIL's global one; its warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(stream, formats=IMAGE_FORMATS)
        with opened as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image too large: {width}x{height} = {width * height} pixels, limit is {max_pixels}"
                )
            im.load()
            transposed = ImageOps.exif_transpose(im)
            return _to_rgb_uint8(transposed)
    except ImageDecodeError:
        raise
    except Exception as exc:  # PIL's plugins raise OSError, SyntaxError, TypeError, struct.error, ...
        raise ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc


def _to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any mode to an `[H, W, 3]` `uint8` array (see `load_image`)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale: scale the full 16-bit range to 8 bits.
        values = np.asarray(im, dtype=np.float64)  # [H, W]
        grey = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb: np.ndarray = np.array(im.convert("RGB"), dtype=np.uint8)
    return rgb


# ----------------------------------------------------------------------------
# Detection.


def face_recognition_models_predictor_path() -> Path:
    """Locate the 68-point predictor file shipped by the `face-recognition-models` package.

    The package folder is found without importing it (its `__init__` imports `pkg_resources`, which
    recent setuptools no longer provides).

    Returns:
        Path of `shape_predictor_68_face_landmarks.dat`.

    Raises:
        FileNotFoundError: The package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package face-recognition-models is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise FileNotFoundError(f"no 68-point predictor at {path}")
    return path


def load_dlib_models(predictor_path: str | Path) -> tuple[Any, Any]:
    """Build dlib's HOG face detector and the 68-point shape predictor.

    Args:
        predictor_path: Path of `shape_predictor_68_face_landmarks.dat`, chosen by the caller.

    Returns:
        `(detector, predictor)`: `dlib.get_frontal_face_detector()` and `dlib.shape_predictor(path)`.
    """
    import dlib  # Heavy and optional: only callers that detect faces need it.

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path))


def _detect(
    image: np.ndarray, *, detector: Any, predictor: Any, upsample_num_times: int
) -> list[tuple[int, np.ndarray]]:
    """Run the detector and predictor; return `(box area, [68, 2] landmarks)`, largest box first."""
    _assert_shape(image, [None, None, 3])
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    pixels = np.ascontiguousarray(image)
    faces = []
    for rect in detector(pixels, upsample_num_times):
        shape = predictor(pixels, rect)
        lm = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)  # [68, 2]
        faces.append((int(rect.width()) * int(rect.height()), lm))
    faces.sort(key=lambda face: -face[0])
    return faces


def detect_landmarks(
    image: np.ndarray, *, detector: Any, predictor: Any, upsample_num_times: int = 0
) -> list[np.ndarray]:
    """Find faces and their 68 dlib landmarks.

    Args:
        image: `[H, W, 3]` `uint8` RGB array.
        detector: `dlib.get_frontal_face_detector()` (HOG).
        predictor: `dlib.shape_predictor` for the 68-point model.
        upsample_num_times: Detector upsampling; 0 finds faces of roughly 80 px and larger.

    Returns:
        One `[68, 2]` float64 array of `(x, y)` pixel coordinates per face, largest detection first.
    """
    faces = _detect(image, detector=detector, predictor=predictor, upsample_num_times=upsample_num_times)
    return [lm for _, lm in faces]


# ----------------------------------------------------------------------------
# Alignment.


@dataclasses.dataclass(frozen=True)
class AlignResult:
    """An aligned face and the transform that produced it.

    The aligned square's corners, in pixel-index coordinates `(-0.5, -0.5)`, `(-0.5, S - 0.5)`,
    `(S - 0.5, S - 0.5)`, `(S - 0.5, -0.5)` (top-left, bottom-left, bottom-right, top-right), map to
    the four rows of `quad`; points in between map bilinearly (for FFHQ quads, which are squares,
    the map is affine). Without a shrink `quad` is exactly `ffhq_quad(landmarks)`; after FFHQ's shrink
    by `k` it is that quad moved by about `(k - 1) / 2` pixels, because the script divides index
    coordinates by `k` while PIL's resize maps pixel centres `u` to `(u + 0.5) / k - 0.5`. `quad` records
    what was really sampled, so `paste_back` puts the face exactly where it came from.
    """

    image: np.ndarray  # [S, S, 3] uint8 aligned face.
    quad: np.ndarray  # [4, 2] corners sampled in the original image: TL, BL, BR, TR (see below).
    landmarks: np.ndarray  # [68, 2] landmarks of this face in the original image.
    output_size: int  # S.

    @property
    def matrix(self) -> np.ndarray:
        """`[3, 3]` projective matrix mapping original pixel coordinates to aligned pixel coordinates."""
        s = self.output_size - 0.5
        corners = np.array([[-0.5, -0.5], [-0.5, s], [s, s], [s, -0.5]])  # [4, 2]
        return _homography(self.quad, corners)

    def to_aligned(self, points: np.ndarray) -> np.ndarray:
        """Map `[N, 2]` original-image points to aligned-image points."""
        return _apply_homography(self.matrix, points)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map `[N, 2]` aligned-image points to original-image points."""
        return _apply_homography(np.linalg.inv(self.matrix), points)


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ oriented quad from 68 landmarks.

    With `eye_to_eye = e_r - e_l`, `eye_to_mouth = m - (e_l + e_r) / 2` (`m` the midpoint of the outer
    mouth corners): `x = eye_to_eye - rot90(eye_to_mouth)`, scaled to `max(2 |eye_to_eye|,
    1.8 |eye_to_mouth|)`; `y = rot90(x)`; centre `c = eye_avg + 0.1 eye_to_mouth`.

    Args:
        landmarks: `[68, 2]` dlib landmarks.

    Returns:
        `[4, 2]` corners `c - x - y, c - x + y, c + x + y, c + x - y` (TL, BL, BR, TR).
    """
    _assert_shape(landmarks, [68, 2])
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_outer = lm[48:60]
    mouth_avg = (mouth_outer[0] + mouth_outer[6]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    *,
    output_size: int,
    transform_size: int | None = None,
    enable_padding: bool = True,
) -> AlignResult:
    """Align one face as the FFHQ dataset script does.

    Steps (names as in `recreate_aligned_images`): `quad` from `ffhq_quad`, `qsize = 2 |x|`; shrink by
    `floor(qsize / output_size / 2)` when above 1 (Lanczos); crop to the quad plus a `0.1 qsize` border;
    reflect-pad where the quad leaves the image (at least `0.3 qsize`), blurring the padding with a
    Gaussian of sigma `0.02 qsize` and fading it to the median colour; PIL quad transform to
    `transform_size` (bilinear) and a Lanczos resize to `output_size`.

    Args:
        image: `[H, W, 3]` `uint8` RGB array.
        landmarks: `[68, 2]` dlib landmarks of the face, in `image` pixel coordinates.
        output_size: Side `S` of the aligned square (the generator's resolution).
        transform_size: Side of the intermediate quad transform; `4 * output_size` by default (FFHQ
            uses 4096 for 1024).
        enable_padding: Reflect-pad where the quad leaves the image, as FFHQ does.

    Returns:
        `AlignResult` with the `[S, S, 3]` image and the quad actually sampled, in `image` coordinates.
    """
    _assert_shape(image, [None, None, 3])
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if transform_size is None:
        transform_size = 4 * output_size
    quad = ffhq_quad(landmarks)
    qsize = np.hypot(*(quad[3] - quad[0]))  # 2 |x|
    img = Image.fromarray(np.ascontiguousarray(image))
    orig_w, orig_h = img.size

    # Shrink.
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
    scale = np.array([orig_w / img.size[0], orig_h / img.size[1]])  # Shrunk pixels to original pixels.
    shrunk_quad = quad.copy()

    # Crop.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, img.size[0]),
        min(crop[3] + border, img.size[1]),
    )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # Pad.
    pad = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - img.size[0] + border, 0),
        max(pad[3] - img.size[1] + border, 0),
    )
    if enable_padding and max(pad) > border - 4:
        pad = tuple(np.maximum(pad, int(np.rint(qsize * 0.3))))
        arr = np.pad(
            np.asarray(img, dtype=np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect"
        )
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        # Guard the denominators: FFHQ's pads are >= 0.3 qsize > 0 except for degenerate faces.
        p = [max(v, 1e-8) for v in pad]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(xx) / p[0], np.float32(w - 1 - xx) / p[2]),
            1.0 - np.minimum(np.float32(yy) / p[1], np.float32(h - 1 - yy) / p[3]),
        )  # [H, W, 1]
        blur = qsize * 0.02
        arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(
            mask * 3.0 + 1.0, 0.0, 1.0
        )
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)))
        quad += pad[:2]

    # Transform.
    img = img.transform(
        (transform_size, transform_size),
        Image.Transform.QUAD,
        (quad + 0.5).flatten().tolist(),
        Image.Resampling.BILINEAR,
    )
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    aligned = np.asarray(img, dtype=np.uint8).copy()  # [S, S, 3]

    # The quad PIL sampled, in original pixel coordinates: crop and pad are integer shifts that cancel,
    # the shrink rescales continuous coordinates `u + 0.5`.
    original_quad = (shrunk_quad + 0.5) * scale - 0.5
    return AlignResult(
        image=aligned,
        quad=original_quad,
        landmarks=np.asarray(landmarks, dtype=np.float64).copy(),
        output_size=output_size,
    )


def align_largest_face(
    image: np.ndarray,
    *,
    detector: Any,
    predictor: Any,
    output_size: int,
    transform_size: int | None = None,
    enable_padding: bool = True,
    upsample_num_times: int = 0,
) -> tuple[AlignResult, int]:
    """Detect faces, then align the one with the largest detection box.

    Args:
        image: `[H, W, 3]` `uint8` RGB array.
        detector: `dlib.get_frontal_face_detector()`.
        predictor: `dlib.shape_predictor` for the 68-point model.
        output_size: Side of the aligned square.
        transform_size: See `align_face`.
        enable_padding: See `align_face`.
        upsample_num_times: Detector upsampling (0 as in the FFHQ pipeline's default use).

    Returns:
        `(result, faces_found)`.

    Raises:
        NoFaceFound: The detector found no face.
    """
    faces = _detect(image, detector=detector, predictor=predictor, upsample_num_times=upsample_num_times)
    if not faces:
        raise NoFaceFound(f"no face found in the {image.shape[1]}x{image.shape[0]} image")
    result = align_face(
        image,
        faces[0][1],
        output_size=output_size,
        transform_size=transform_size,
        enable_padding=enable_padding,
    )
    return result, len(faces)


# ----------------------------------------------------------------------------
# Paste back.


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`[3, 3]` projective matrix mapping the four `src` points onto the four `dst` points (DLT)."""
    rows = []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.asarray(rows, dtype=np.float64))
    h: np.ndarray = vt[-1].reshape(3, 3)
    normalised: np.ndarray = h / h[2, 2]
    return normalised


def _apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a `[3, 3]` projective matrix to `[N, 2]` points."""
    pts = np.asarray(points, dtype=np.float64)
    homog: np.ndarray = np.concatenate([pts, np.ones_like(pts[:, :1])], axis=1) @ matrix.T  # [N, 3]
    mapped: np.ndarray = homog[:, :2] / homog[:, 2:3]
    return mapped


def paste_back(
    original: np.ndarray, edited: np.ndarray, result: AlignResult, *, feather: float = 0.1
) -> np.ndarray:
    """Warp an edited aligned face back into the original photo and blend it with a feathered mask.

    Each original pixel `p` inside the quad is mapped into the aligned square by `result.matrix`
    (the inverse of the alignment's quad transform) and samples `edited` bilinearly. The mask is 1 in
    the square's interior and falls linearly to 0 over the outer `feather * S` pixels of each side, so
    `out = original * (1 - mask) + warped * mask`.

    Args:
        original: `[H, W, 3]` `uint8` photo the face was aligned from.
        edited: `[S', S', 3]` `uint8` edited aligned face; `S'` may differ from `result.output_size`
            (for example a generator output at another resolution).
        result: The `AlignResult` of `original`.
        feather: Width of the soft edge, as a fraction of the square's side, in (0, 0.5].

    Returns:
        `[H, W, 3]` `uint8` photo; pixels outside the quad are those of `original`.
    """
    _assert_shape(original, [None, None, 3])
    _assert_shape(edited, [None, None, 3])
    if original.dtype != np.uint8 or edited.dtype != np.uint8:
        raise ValueError(f"expected uint8 pictures, got {original.dtype} and {edited.dtype}")
    if edited.shape[0] != edited.shape[1]:
        raise ValueError(f"expected a square edited face, got {tuple(edited.shape)}")
    if not 0.0 < feather <= 0.5:
        raise ValueError(f"feather must be in (0, 0.5], got {feather}")
    height, width, _ = original.shape
    size = edited.shape[0]

    # Pixels of the original that the quad covers.
    x0 = max(int(np.floor(result.quad[:, 0].min())), 0)
    y0 = max(int(np.floor(result.quad[:, 1].min())), 0)
    x1 = min(int(np.ceil(result.quad[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(result.quad[:, 1].max())) + 1, height)
    out: np.ndarray = original.copy()
    if x0 >= x1 or y0 >= y1:
        return out

    # Original pixel -> continuous aligned coordinates in [0, size].
    yy, xx = np.mgrid[y0:y1, x0:x1]
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)  # [N, 2]
    aligned = (result.to_aligned(pts) + 0.5) * (size / result.output_size)  # [N, 2]

    # Feathered mask: distance to the square's nearest side over the feather width.
    edge = np.minimum(aligned, size - aligned).min(axis=1)  # [N]
    mask = np.clip(edge / (feather * size), 0.0, 1.0).reshape(y1 - y0, x1 - x0, 1)

    # Bilinear sampling of the edited face at pixel-index coordinates.
    coords = [aligned[:, 1] - 0.5, aligned[:, 0] - 0.5]
    warped = np.stack(
        [
            scipy.ndimage.map_coordinates(edited[:, :, c].astype(np.float32), coords, order=1, mode="nearest")
            for c in range(3)
        ],
        axis=1,
    ).reshape(y1 - y0, x1 - x0, 3)  # [h, w, 3]

    region = out[y0:y1, x0:x1].astype(np.float32)
    blended = region * (1.0 - mask) + warped * mask
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
