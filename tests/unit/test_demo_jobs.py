"""The job runner of the demo pack build (`models.demo_pack._run_jobs`) and the parts it splits work into."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import torch

from models.demo_pack import _given, _Job, _run_jobs
from models.evaluation import METHODS, dt_comparison, flip_rates, merge_dt
from models.pack import load_pack
from service.config import DEFAULT_PACK_PATH


def _square(x: int, *, progress: Any) -> dict[str, Any]:
    progress(1, 2)
    progress(2, 2)
    return {"value": torch.full([3], float(x * x)), "threads": torch.get_num_threads()}


def _add(a: dict[str, Any], b: dict[str, Any], *, progress: Any) -> dict[str, Any]:
    return {"value": a["value"] + b["value"], "threads": torch.get_num_threads()}


def _fail(*, progress: Any) -> None:
    raise RuntimeError("this job fails on purpose")


def _sleep(seconds: float, *, progress: Any) -> None:
    time.sleep(seconds)


def _graph() -> list[_Job]:
    return [
        _Job("sum", _add, lambda r: (r["a"], r["b"]), 1, deps=("a", "b")),
        _Job("a", _square, _given(3), 2),
        _Job("b", _square, _given(4), 2),
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_run_after_their_dependencies_with_one_thread(workers: int) -> None:
    events: list[tuple[str, int, int]] = []
    results = _run_jobs(_graph(), workers=workers, stage="s", on_progress=lambda *e: events.append(e))
    assert list(results) == ["sum", "a", "b"]  # The order of the jobs, not of their completion.
    assert results["sum"]["value"].tolist() == [25.0] * 3
    assert {r["threads"] for r in results.values()} == {1}
    assert events[0] == ("s", 0, 5) and events[-1] == ("s", 5, 5)
    done = [e[1] for e in events]
    assert done == sorted(done)  # Progress never goes back.


def test_a_failing_job_stops_the_others() -> None:
    jobs = [_Job("slow", _sleep, _given(60.0), 1), _Job("bad", _fail, _given(), 1)]
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="fails on purpose"):
        _run_jobs(jobs, workers=2, stage="s", on_progress=lambda *e: None)
    assert time.monotonic() - start < 30  # The 60 s job was stopped, not waited for.


def test_bad_job_graphs() -> None:
    with pytest.raises(ValueError, match="Bad job graph"):
        _run_jobs([_Job("a", _square, _given(1), 1, deps=("nope",))], workers=1, stage="s",
                  on_progress=lambda *e: None)
    with pytest.raises(ValueError, match="at least one worker"):
        _run_jobs(_graph(), workers=0, stage="s", on_progress=lambda *e: None)


def test_parts_measure_what_one_run_measures() -> None:
    """Flip rates of one attribute and DT parts of one (primal, condition) equal the whole run."""
    pack = load_pack(DEFAULT_PACK_PATH, "cpu")
    settings: dict[str, Any] = {"num": 3, "steps": 2, "step": 0.3, "truncation_psi": 0.7, "seed": 5}
    names = ["smiling", "male", "pose"]
    whole = flip_rates(pack, lambda1=0.75, lambda2=0.0, attributes=names, **settings)
    male = flip_rates(pack, lambda1=0.75, lambda2=0.0, attributes=["male"], **settings)
    assert male == {"male": whole["male"]}

    methods = METHODS[:2]
    one = dt_comparison(pack, methods=methods, attributes=names, **settings)
    parts = merge_dt([
        dt_comparison(pack, methods=methods, attributes=names, primals=[p], conditions=[c], **settings)
        for p in names for c in names if c != p
    ])
    assert _same_rows(parts["pairs"], one["pairs"])  # The same rows in the same order.
    assert _same_rows(parts["methods"], one["methods"])
    with pytest.raises(ValueError, match="Unknown conditions"):
        dt_comparison(pack, methods=methods, attributes=names, conditions=["bald"], **settings)


def _same_rows(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN (a matched range without overlap)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_rows(a[k], b[k]) for k in a)
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return False
        return all(_same_rows(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def test_cli_set_takes_json_and_bare_words_for_text_fields() -> None:
    from cli.build_demo_pack import _overrides
    from cli.common import CliError

    assert _overrides(["steering_steps=200", "weights_dtype=float32", "step_grid=[0.1, 0.2]"]) == {
        "steering_steps": 200, "weights_dtype": "float32", "step_grid": (0.1, 0.2),
    }
    assert _overrides(['weights_dtype="bfloat16"']) == {"weights_dtype": "bfloat16"}
    with pytest.raises(CliError, match="must be JSON"):
        _overrides(["steering_steps=many"])
    with pytest.raises(CliError, match="expected NAME=VALUE"):
        _overrides(["no_such_field=1"])


@pytest.mark.parametrize(
    "value", [0, True, 2500.0, None, "many", (1500, 1500), (1500, 0, 1, 1, 1), (1.5, 1, 1, 1, 1)]
)
def test_step_counts_are_one_or_one_per_attribute(value: Any) -> None:
    from models.demo_pack import DemoPackConfig

    with pytest.raises(ValueError, match=r"evaluator_steps must be a step count >= 1 or one per attribute"):
        DemoPackConfig(evaluator_steps=value)
    with pytest.raises(ValueError, match=r"evaluator_steps must be"):
        DemoPackConfig(evaluator_steps=[5, 4, 3, 2, 1])  # type: ignore[arg-type]  # A tuple, as --set makes it.
    assert DemoPackConfig(evaluator_steps=(5, 4, 3, 2, 1)).evaluator_steps == (5, 4, 3, 2, 1)


@pytest.mark.parametrize("steps", [2500, (2500, 1500, 2500, 1500, 1500)])
@pytest.mark.parametrize("workers", [1, 2])
def test_training_jobs_and_their_dependencies(steps: Any, workers: int) -> None:
    from models.demo_pack import DemoPackConfig, _training_jobs
    from models.networks.procedural import ATTRIBUTES

    jobs, roles = _training_jobs(DemoPackConfig(steering_steps=steps, evaluator_steps=steps), workers)
    by_name = {job.name: job for job in jobs}
    assert len(by_name) == len(jobs)
    steering = ["steering " + "+".join(ATTRIBUTES)] if steps == 2500 else [
        "steering smiling+male", "steering young+eyeglasses+pose",
    ]
    # The same step counts; with 2 workers each count's attributes split in two (longer first).
    evaluator = [f"evaluators {group}" for group in (
        ["smiling+young+male", "eyeglasses+pose"] if steps == 2500 else
        ["smiling", "male", "young+eyeglasses", "pose"]
    )] if workers > 1 else [job.replace("steering", "evaluators") for job in steering]
    assert roles == {"steering": steering, "evaluator": evaluator}
    assert set(by_name) == {"encoder", "directions", *steering, *evaluator}
    assert by_name["directions"].deps == tuple(steering)
    assert all(not by_name[name].deps for name in by_name if name != "directions")


def test_split_keeps_the_order_in_balanced_runs() -> None:
    from models.demo_pack import _split

    names = ("a", "b", "c", "d", "e")
    assert _split(names, 1) == [names]
    assert _split(names, 2) == [("a", "b", "c"), ("d", "e")]
    assert _split(names, 3) == [("a", "b"), ("c", "d"), ("e",)]
    assert _split(names, 8) == [(name,) for name in names]
    assert _split(("a",), 4) == [("a",)]


def test_classifier_jobs_group_the_attributes_by_step_count() -> None:
    from models.demo_pack import DemoPackConfig, _classifier_jobs
    from models.networks.procedural import ATTRIBUTES

    config = DemoPackConfig(steering_steps=(10, 5, 10, 5, 5), evaluator_steps=7)
    assert _classifier_jobs("steering", config) == [
        (10, ("smiling", "male")), (5, ("young", "eyeglasses", "pose")),
    ]
    assert _classifier_jobs("evaluator", config) == [(7, tuple(ATTRIBUTES))]


@pytest.mark.parametrize("value", ["int8", "half", None, 16])
def test_weights_dtype_is_one_of_the_stored_names(value: Any) -> None:
    """A bad storage dtype fails when the config is made, before any training."""
    from models.demo_pack import DemoPackConfig

    names = r"\['float32', 'float16', 'bfloat16'\]"
    with pytest.raises(ValueError, match=r"weights_dtype must be one of " + names):
        DemoPackConfig(weights_dtype=value)
    assert DemoPackConfig(weights_dtype="bfloat16").weights_dtype == "bfloat16"


def test_step_choice_warns_when_no_step_reaches_the_target() -> None:
    from models.demo_pack import DemoPackConfig, _choose_step

    pack = load_pack(DEFAULT_PACK_PATH, "cpu")
    config = DemoPackConfig(step_grid=(0.001, 0.002), step_faces=2, steps=2)
    seen: list[tuple[str, int, int]] = []
    with pytest.warns(UserWarning, match=r"no step of \[0.001, 0.002\] flips .* the largest, 0.002"):
        chosen, measured = _choose_step(pack, config, lambda *event: seen.append(event))
    assert chosen == 0.002
    assert seen == [("step size", 1, 2), ("step size", 2, 2)]
    for step in ("0.001", "0.002"):
        # GANSpace first, and each step stops at its first miss: one attribute measured.
        assert measured[step]["worst"] < config.step_target
        assert list(measured[step]["rates"]) == [next(iter(pack.attributes))]
        assert list(measured[step]["rates"][next(iter(pack.attributes))]) == ["ganspace"]
