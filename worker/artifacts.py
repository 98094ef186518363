"""A job's artifacts, encoded in memory and written to the store one atomic file at a time."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
from PIL import Image

from service.store import ArtifactStore


def png_bytes(picture: np.ndarray) -> bytes:
    """`[H, W, 3]` uint8 as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def animation_bytes(pictures: list[np.ndarray], fmt: str, *, frame_ms: int = 100, scale: int = 1) -> bytes:
    """Frames as a looping animated GIF or WebP, each shown `frame_ms`, enlarged `scale` times
    (nearest neighbour: small generator outputs stay crisp)."""
    frames = [Image.fromarray(p) for p in pictures]
    if scale > 1:
        frames = [f.resize((f.width * scale, f.height * scale), Image.Resampling.NEAREST) for f in frames]
    buffer = io.BytesIO()
    extra: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {"optimize": False}
    frames[0].save(
        buffer, format=fmt, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0, **extra
    )
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, allow_nan=False).encode()


def write_edit_artifacts(
    store: ArtifactStore,
    job_id: str,
    *,
    pictures: list[np.ndarray],
    latents: np.ndarray,
    scores: dict[str, Any],
    params: dict[str, Any],
    photo: dict[str, np.ndarray] | None = None,
) -> list[str]:
    """Write every artifact of a finished edit under `jobs/<job_id>/`; return their names.

    Artifacts: `frames/frame_NNNN.png`, `frames.zip`, `edit.gif`, `edit.webp`, `strip.png`,
    `latents.npy` (`[F, ...]`), `scores.json`, `edit.json`, and for photos each picture of `photo`
    (`aligned.png`, `inversion.png`, `pasted.png`).
    """
    names: list[str] = []

    def put(name: str, data: bytes) -> None:
        store.put(f"jobs/{job_id}/{name}", data)
        names.append(name)

    frames = [png_bytes(p) for p in pictures]
    for idx, data in enumerate(frames):
        put(f"frames/frame_{idx:04d}.png", data)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for idx, data in enumerate(frames):
            zf.writestr(f"frame_{idx:04d}.png", data)
    put("frames.zip", archive.getvalue())
    scale = max(1, 256 // max(pictures[0].shape[0], 1))
    put("edit.gif", animation_bytes(pictures, "GIF", scale=scale))
    put("edit.webp", animation_bytes(pictures, "WEBP", scale=scale))
    put("strip.png", png_bytes(np.concatenate(pictures, axis=1)))
    put("latents.npy", npy_bytes(latents))
    put("scores.json", json_bytes(scores))
    put("edit.json", json_bytes(params))
    for name, picture in (photo or {}).items():
        put(f"{name}.png", png_bytes(picture))
    return names
