"""`models.editing`: one face edited with a pack, and why an edit stopped early."""

from __future__ import annotations

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
