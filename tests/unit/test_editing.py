"""`models.editing`: one face edited with a pack, and why an edit stopped early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.editing import edit_with_pack, scores_table, start_ws
from models.pack import load_pack


def test_edit_with_pack_reports_why_it_stopped(tiny_pack_path: Path) -> None:
    pack = load_pack(tiny_pack_path, "cpu")
    ws = start_ws(pack, seed=3, truncation_psi=0.7)
    kwargs = dict(primal="smiling", conditions=["young"], direction_kind="interfacegan", steps=3, step=0.1,
                  lambda1=0.75, lambda2=0.0)
    plain = edit_with_pack(pack, ws, **kwargs)  # type: ignore[arg-type]
    assert (plain.stopped_at, plain.stop_reason) == (3, None)
    # A score <= 1 is reached at once when lowering the primal.
    reached = edit_with_pack(pack, ws, **{**kwargs, "step": -0.1, "target_score": 1.0})  # type: ignore[arg-type]
    assert (reached.stopped_at, reached.stop_reason) == (0, "target_score")
    table = scores_table(reached.steering, reached.evaluated, reached.stopped_at, reached.stop_reason)
    assert table["stop_reason"] == "target_score" and len(table["frames"]) == 4


def test_edit_with_pack_refuses_an_edit_with_nothing_to_move_along(tiny_pack_path: Path) -> None:
    """lambda1 = 0 steers by the classifier's gradient alone; a constant classifier has none, so the
    primal direction is zero from the start: a clear ValueError (the service's invalid_edit)."""
    pack = load_pack(tiny_pack_path, "cpu")
    fc = pack.attributes["smiling"].steering.net.fc
    with torch.no_grad():
        fc.weight.zero_()
    ws = start_ws(pack, seed=3, truncation_psi=0.7)
    with pytest.raises(ValueError, match="span of the conditions at the start"):
        edit_with_pack(pack, ws, primal="smiling", conditions=["young"], direction_kind="interfacegan",
                       steps=3, step=0.1, lambda1=0.0, lambda2=0.0)
    # With some of the attribute-level direction in the mix there is something to move along.
    result = edit_with_pack(pack, ws, primal="smiling", conditions=["young"], direction_kind="interfacegan",
                            steps=3, step=0.1, lambda1=0.5, lambda2=0.0)
    assert result.stop_reason is None and not torch.equal(result.ws[0], result.ws[-1])


class FlatAfter(torch.nn.Module):
    """A classifier whose logits keep their values but lose their gradient after `calls` calls."""

    def __init__(self, inner: torch.nn.Module, calls: int) -> None:
        super().__init__()
        self.inner, self.calls, self.count = inner, calls, 0

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        self.count += 1
        out: torch.Tensor = self.inner.logits(images)  # type: ignore[operator]
        return out if self.count <= self.calls else out * 0 + out.detach()


def test_edit_with_pack_stops_where_the_primal_direction_degenerates(
    tiny_pack_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mid-edit the face keeps the frames made so far and says why it stopped (the job does not fail)."""
    from cli.edit import write_edit
    from models.images import to_uint8

    pack = load_pack(tiny_pack_path, "cpu")
    attribute = pack.attributes["smiling"]
    attribute.steering = FlatAfter(attribute.steering, calls=2)  # type: ignore[assignment]
    ws = start_ws(pack, seed=3, truncation_psi=0.7)
    result = edit_with_pack(pack, ws, primal="smiling", conditions=["young"], direction_kind="interfacegan",
                            steps=5, step=0.1, lambda1=0.0, lambda2=0.0)
    assert (result.stopped_at, result.stop_reason) == (2, "degenerate")
    assert not torch.equal(result.ws[0], result.ws[1]) and not torch.equal(result.ws[1], result.ws[2])
    for frame in range(3, 6):
        assert torch.equal(result.ws[frame], result.ws[2])
        assert torch.equal(result.images[frame], result.images[2])
    assert result.steering["smiling"][2:] == [result.steering["smiling"][2]] * 4
    assert result.evaluated["smiling"][2:] == [result.evaluated["smiling"][2]] * 4

    from PIL import Image

    params = {"stopped_at": result.stopped_at, "stop_reason": result.stop_reason}
    write_edit(tmp_path, pixels=to_uint8(result.images), latents=result.ws.numpy(), steering=result.steering,
               evaluated=result.evaluated, params=params, image_module=Image)
    assert "at frame 2 the primal direction fell into the span of the conditions" in capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert (scores["stopped_at"], scores["stop_reason"]) == (2, "degenerate")
