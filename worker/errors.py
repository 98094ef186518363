"""Domain errors of a job, each stored with a machine-readable code in the job's meta."""

from __future__ import annotations

from rq.timeouts import JobTimeoutException

from models.align import ImageDecodeError, NoFaceFound
from models.editing import DirectionUnavailableError, EditDivergedError, UnknownAttributeError
from models.pack import PackError


class JobFailure(Exception):
    """A job failed for a reason its requester should know, with a machine-readable `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobCanceled(JobFailure):
    """The job was canceled by `DELETE /v1/jobs/{id}` while it ran."""

    def __init__(self) -> None:
        super().__init__("canceled", "the job was canceled")


# Exception class -> code, most specific first.
_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (NoFaceFound, "no_face_found"),
    (ImageDecodeError, "image_undecodable"),
    (UnknownAttributeError, "unknown_attribute"),
    (DirectionUnavailableError, "direction_unavailable"),
    (EditDivergedError, "edit_diverged"),
    (PackError, "pack_unavailable"),
    (JobTimeoutException, "timeout"),
    (FileNotFoundError, "input_expired"),
    (ValueError, "invalid_edit"),
)


def error_of(exc: BaseException) -> tuple[str, str]:
    """`(code, message)` of an exception raised while a job ran; `internal_error` for the unexpected."""
    if isinstance(exc, JobFailure):
        return exc.code, exc.message
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, str(exc) or cls.__name__
    return "internal_error", f"{type(exc).__name__}: {exc}"
