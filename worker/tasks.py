"""Job functions, enqueued by dotted path (`worker.tasks.run_edit`) with plain JSON arguments.

A job validates its request, calls models/, writes its artifacts to the store and reports its stage,
progress and timings in `job.meta`. A domain error is stored as `job.meta["error"] = {code, message}`
and is not retried; only a job whose worker died is (`rq.Retry`, see `service.queue.enqueue_edit`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from typing import Any

import numpy as np
import torch
from rq import get_current_job
from rq.job import Job

from models.align import AlignResult, align_largest_face, load_image, paste_back
from models.editing import edit_with_pack, scores_table, start_ws
from models.images import from_uint8, to_uint8
from models.inversion import invert_with_pack
from service.queue import CANCEL_KEY
from service.schemas import EditJob, SourceSpec, finite_json
from worker.artifacts import npy_bytes, write_edit_artifacts
from worker.context import WorkerContext, get_context
from worker.errors import JobCanceled, JobFailure, error_of

log = logging.getLogger(__name__)
META_INTERVAL_S = 0.25  # Least time between two progress writes to Redis.


class Reporter:
    """Stage, progress and timings of the running job in `job.meta`, and its cancel flag."""

    def __init__(self, job: Job | None) -> None:
        self.job = job
        self.timings: dict[str, float | bool] = {}
        self._last_save = 0.0
        self._stage_start = time.perf_counter()
        self._stage: str | None = None

    def _save(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.job is None or (not force and now - self._last_save < META_INTERVAL_S):
            return
        self._last_save = now
        self.job.save_meta()  # type: ignore[no-untyped-call]

    def check_canceled(self) -> None:
        if self.job is not None and self.job.connection.exists(CANCEL_KEY.format(self.job.id)):
            raise JobCanceled()

    def stage(self, name: str, total: int | None = None) -> None:
        """Close the current stage's timing and start `name`."""
        self._close_stage()
        self._stage, self._stage_start = name, time.perf_counter()
        if self.job is not None:
            self.job.meta["stage"] = name
            self.job.meta["progress"] = {"step": 0, "total": total} if total else None
            self.job.meta["timings"] = self.timings
        self.check_canceled()
        self._save(force=True)

    def _close_stage(self) -> None:
        if self._stage is not None and self._stage != "done":
            self.timings[self._stage] = round(time.perf_counter() - self._stage_start, 4)

    def on_step(self, step: int, total: int) -> None:
        """The `on_step(i, n)` callback of models/."""
        if self.job is not None:
            self.job.meta["progress"] = {"step": step, "total": total}
        self.check_canceled()
        self._save(force=step == total)

    def done(self) -> None:
        self.stage("done")
        self.timings["total"] = round(sum(v for v in self.timings.values() if not isinstance(v, bool)), 4)
        if self.job is not None:
            self.job.meta["progress"] = None
            self.job.meta["timings"] = self.timings
        self._save(force=True)

    def fail(self, code: str, message: str) -> None:
        self._close_stage()
        if self.job is not None:
            self.job.meta["error"] = {"code": code, "message": message}
            self.job.meta["timings"] = self.timings
            self.job.retries_left = 0  # A domain error would fail again: no retry.
            self.job.save_meta()  # type: ignore[no-untyped-call]


def run_edit(request: dict[str, Any]) -> dict[str, Any]:
    """Run one accepted edit (`service.schemas.EditJob` as JSON) and write its artifacts.

    Returns:
        `{"artifacts": [names], "timings", "input_latent", "stopped_at", "stop_reason", "scores", ...}`,
        with any non-finite float (an infinite PSNR, say) as None so that the result stays strict JSON.

    Raises:
        Exception: Any error, after storing its code in `job.meta["error"]`.
    """
    job = get_current_job()
    reporter = Reporter(job)
    try:
        accepted = EditJob.model_validate(request)
        job_id = job.id if job is not None else hashlib.sha256(repr(request).encode()).hexdigest()[:32]
        result: dict[str, Any] = finite_json(_run_edit(get_context(), accepted, job_id, reporter))
        return result
    except Exception as exc:
        code, message = error_of(exc)
        log.warning("job %s failed: %s: %s", getattr(job, "id", None), code, message)
        reporter.fail(code, message)
        raise


def _load_npy(context: WorkerContext, key: str) -> np.ndarray:
    with context.store.open(key) as f:
        array = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise JobFailure("invalid_latent_file", f"{key} does not hold a numeric array")
    return array


def _run_edit(context: WorkerContext, request: EditJob, job_id: str, reporter: Reporter) -> dict[str, Any]:
    pack = context.pack
    store = context.store
    result: dict[str, Any] = {}
    photo: dict[str, np.ndarray] | None = None
    source = request.source

    # Start latent.
    if source.kind == "image":
        ws, photo_state = _invert_photo(context, source, request.effort or "balanced", reporter)
        result["inversion"] = photo_state["summary"]
    else:
        reporter.stage("edit", total=request.steps)
        if source.kind == "seed":
            ws = start_ws(pack, seed=source.seed, truncation_psi=request.truncation_psi)
        else:
            assert source.key is not None
            latent = torch.from_numpy(_load_npy(context, source.key).astype(np.float32))
            if latent.ndim not in (2, 3) or latent.shape[0] != 1 or latent.shape[-1] != pack.w_dim:
                raise JobFailure("invalid_latent_shape", f"latent of shape {list(latent.shape)} does not fit")
            if latent.ndim == 3 and latent.shape[1] != pack.num_ws:
                raise JobFailure("invalid_latent_shape", f"latent of shape {list(latent.shape)} does not fit")
            ws = start_ws(pack, latent=latent, truncation_psi=request.truncation_psi)
    start = npy_bytes(ws.cpu().numpy())
    input_key = f"uploads/{hashlib.sha256(start).hexdigest()}.npy"
    store.put(input_key, start)
    result["input_latent"] = input_key

    # Edit.
    if source.kind == "image":
        reporter.stage("edit", total=request.steps)
    edited = edit_with_pack(
        pack,
        ws,
        primal=request.primal,
        conditions=request.conditions,
        direction_kind=request.directions,
        steps=request.steps,
        step=request.step,
        lambda1=request.lambda1,
        lambda2=request.lambda2,
        target_score=request.target_score,
        on_step=reporter.on_step,
    )

    # Render.
    reporter.stage("render")
    pixels = to_uint8(edited.images)  # [F, H, W, C]
    pictures = [p.repeat(3, axis=-1) if p.shape[-1] == 1 else p for p in pixels]
    if source.kind == "image":
        photo = {
            "aligned": photo_state["aligned"],
            "inversion": photo_state["reconstruction"],
            "pasted": paste_back(photo_state["original"], pictures[-1], photo_state["align"]),
        }
    scores = scores_table(edited.steering, edited.evaluated, edited.stopped_at, edited.stop_reason)
    params = {**request.model_dump(), "pack": pack.manifest.get("name"), "noise_mode": "const"}
    names = write_edit_artifacts(
        store,
        job_id,
        pictures=pictures,
        latents=edited.ws.cpu().numpy(),
        scores=scores,
        params={**params, "stopped_at": edited.stopped_at, "stop_reason": edited.stop_reason},
        photo=photo,
    )
    reporter.done()
    result.update(
        artifacts=names,
        timings=reporter.timings,
        stopped_at=edited.stopped_at,
        stop_reason=edited.stop_reason,
        scores={name: {"first": v[0], "last": v[-1]} for name, v in edited.steering.items()},
        evaluator={name: {"first": v[0], "last": v[-1]} for name, v in edited.evaluated.items()},
    )
    return result


def _invert_photo(
    context: WorkerContext, source: SourceSpec, effort: str, reporter: Reporter
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Align and invert a stored photo, or take both from the cache (same bytes, pack and effort)."""
    pack = context.pack
    store = context.store
    assert source.key is not None
    reporter.stage("align")
    with store.open(source.key) as f:
        data = f.read()
    digest = source.sha256 or hashlib.sha256(data).hexdigest()
    original = load_image(data, max_pixels=context.settings.max_image_pixels)
    cache_key = f"cache/inversions/{digest}-{context.pack_id[:16]}-{effort}.npz"
    if store.exists(cache_key):
        with store.open(cache_key) as f:
            cached = np.load(io.BytesIO(f.read()), allow_pickle=False)
            entries = {name: cached[name] for name in cached.files}
        store.touch(cache_key)
        reporter.timings["cached"] = True
        align = AlignResult(
            image=entries["aligned"],
            quad=entries["quad"],
            landmarks=entries["landmarks"],
            output_size=int(entries["output_size"]),
        )
        ws = torch.from_numpy(entries["ws"]).to(pack.device)
        summary = {"cached": True, "psnr": float(entries["psnr"]), "faces_found": int(entries["faces_found"])}
        reporter.timings["invert"] = 0.0
    else:
        detector, predictor = context.dlib_models()
        align, faces_found = align_largest_face(
            original, detector=detector, predictor=predictor, output_size=pack.img_resolution
        )
        reporter.stage("invert")
        images = from_uint8(align.image, device=pack.device)  # [1, 3, S, S]
        inverted = invert_with_pack(pack, images, effort=effort, on_step=reporter.on_step)
        ws = inverted.ws
        entries = {
            "ws": ws.cpu().numpy(),
            "aligned": align.image,
            "quad": align.quad,
            "landmarks": align.landmarks,
            "output_size": np.array(align.output_size),
            "reconstruction": to_uint8(inverted.reconstruction)[0],
            "psnr": np.array(float(inverted.psnr[0])),
            "faces_found": np.array(faces_found),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **entries)
        store.put(cache_key, buffer.getvalue())
        summary = {"cached": False, "psnr": float(entries["psnr"]), "faces_found": faces_found}
        reporter.timings["cached"] = False
    return ws, {
        "summary": summary,
        "aligned": entries["aligned"],
        "reconstruction": entries["reconstruction"],
        "original": original,
        "align": align,
    }
