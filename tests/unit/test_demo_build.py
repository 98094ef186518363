"""`build_demo_pack` end to end on a tiny config: the same pack from one process or two, and a report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.demo_pack import DemoPackConfig, build_demo_pack
from models.networks.procedural import ATTRIBUTES
from models.pack import load_pack

TINY = DemoPackConfig(
    img_resolution=32, batch_size=8, steering_width=4, steering_steps=(50, 40, 40, 40, 40),
    evaluator_arch="resnet34", evaluator_width=4, evaluator_steps=(3, 2, 2, 2, 2), encoder_width=4,
    svm_samples=300, averaged_samples=8, ganspace_samples=300,
    ganspace_components=6, encoder_steps=2, encoder_batch_size=4, steps=3, step_grid=(0.5, 1.0), step_faces=4,
    eval_faces=16, flip_faces=3, dt_faces=3, encoder_faces=4, sheet_faces=4,
)


@pytest.mark.slow
def test_tiny_build_is_the_same_with_one_or_two_processes(tmp_path: Path) -> None:
    events: list[tuple[str, int, int]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # In this process too, every job runs with one thread.
    try:
        one = build_demo_pack(tmp_path / "one", TINY, jobs=1, on_progress=lambda *e: events.append(e))
    finally:
        torch.set_num_threads(threads)
    two = build_demo_pack(tmp_path / "two", TINY, jobs=2)
    manifest_one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    manifest_two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest_one["files"] == manifest_two["files"]  # Every weight file hashes the same.
    assert manifest_one["defaults"]["step"] in TINY.step_grid
    assert manifest_one["extra"]["build"]["config"]["steering_label_sharpness"] == 3.0
    pack = load_pack(tmp_path / "two", "cpu")
    assert pack.attributes["smiling"].evaluator is not None
    assert pack.attributes["smiling"].evaluator.init_kwargs["arch"] == "resnet34"
    for report in (one, two):
        assert report["flip_rates"]["rates"].keys() == set(ATTRIBUTES)
        assert report["dt"]["methods"]["IALS (0.75, 0)"]["ground_truth"]["pairs"] == 2 * 5 * 4
    assert one["build"]["environment"]["processes"] == 1
    assert two["build"]["environment"]["processes"] == 2
    # Steering: one job per step count; evaluators: each step count's attributes in one job per
    # process (so the same classifiers came out of different jobs above).
    steering_jobs = {"steering smiling", "steering young+male+eyeglasses+pose"}
    assert set(one["build"]["classifier_job_seconds"]) == steering_jobs | {
        "evaluators smiling", "evaluators young+male+eyeglasses+pose",
    }
    assert set(two["build"]["classifier_job_seconds"]) == steering_jobs | {
        "evaluators smiling", "evaluators young+male", "evaluators eyeglasses+pose",
    }
    assert one["flip_rates"] == two["flip_rates"]
    for method, entry in one["dt"]["methods"].items():
        for labeller in ("ground_truth", "evaluators"):
            for key, value in entry[labeller].items():
                assert value == pytest.approx(two["dt"]["methods"][method][labeller][key], nan_ok=True)
    assert (tmp_path / "two" / "sheet.png").is_file()
    stages = {stage for stage, _, _ in events}
    assert "training (1 process)" in stages
    finished = [e for e in events if e[0] == "training (1 process)"][-1]
    assert finished[1] == finished[2] > 0
