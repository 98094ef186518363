"""A procedural face world behind a StyleGAN interface: the demo pack's generator (`procedural` kind).

The generator is a differentiable face renderer, not a trained network. It samples, truncates and
renders like NVIDIA's StyleGAN2 generator (`mapping(z, c) -> ws`, `synthesis(ws) -> images` in [-1, 1],
`num_ws = 2 * log2(img_resolution) - 2` rows of `w_dim = 512`), so the editing code, the classifiers and
the service cannot tell it apart from one. Unlike a GAN, it knows the truth about every face it draws:
`attribute_logits(ws)` and `attribute_labels(ws)` are exact functions of the latent, so edits can be
scored against ground truth.

World, from latent to picture:

1. Mapping: without `attribute_scales`, `w = z` (isotropic, `w_avg = 0`), broadcast to `num_ws` rows, then
   StyleGAN's truncation `w_avg.lerp(w, psi)` on all rows or on the first `truncation_cutoff` ones. With
   `attribute_scales` W is stretched along each attribute's axis (the unit sum of its subfactor
   directions) to that standard deviation, `w = M z`, as a trained mapping network gives W more variance
   along what matters (GANSpace's premise); the synthesis reads the factors through `M^-1`, so the faces
   and their truths, as functions of z, do not change.
2. Factors: the rows are averaged within three groups, as StyleGAN's layers divide the work: the
   coarse rows (the first ~40 %) decide pose and head shape, the middle rows the facial features and
   the attributes, the fine rows (the last ~20 %, at least one) the colours. Each named factor is the
   projection of its group's mean row onto a fixed unit direction in W (all directions orthonormal,
   drawn from `seed`), so every factor is N(0, 1) at psi = 1.
3. Attributes: each of `ATTRIBUTES` owns `NUM_SUBFACTORS` directions; its score is their normalised
   sum. The logits are `L = mixing @ scores - bias` (the rows of `mixing` are the attribute directions
   in W, deliberately not orthogonal) plus the instance-dependent `COUPLINGS`: a term
   `gain * driver * gate(person)`, where the driver is one subfactor of another attribute and the gate
   a squashed factor of the person. Such a term makes one attribute drag another by an amount that
   differs from face to face, which a single global direction cannot undo (IALS's premise).
4. Face parameters: every logit and nuisance factor is squashed into a valid range (sigmoid or tanh),
   so every latent renders a valid face (`face_parameters`).
5. Rendering: signed distances of ellipses, capsules, arcs and boxes, turned into coverage by a
   sigmoid about one pixel wide and composited back to front (`synthesis`). Everything is
   differentiable in `ws`. There is no stochastic detail: `noise_mode` is accepted and ignored.

The attribute names are those of the official IALS `pretrain/` folder, so that packs are
interchangeable. The bias the world is calibrated to (`BIAS_TABLE`) is FFHQ-like: eyeglasses far more
common among the old, smiling more common among women, beards only on men.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from models.misc import assert_shape, record_init_kwargs

__all__ = [
    "ATTRIBUTES",
    "BIAS_TABLE",
    "COUPLINGS",
    "Coupling",
    "FACTORS",
    "NOISE_MODES",
    "NUM_SUBFACTORS",
    "ProceduralGenerator",
    "ProceduralMapping",
    "ProceduralSynthesis",
    "ROW_GROUPS",
    "bias_table",
    "row_groups",
]

NOISE_MODES = ("random", "const", "none")

# ----------------------------------------------------------------------------
# The world's structure.

ATTRIBUTES = ("smiling", "young", "male", "eyeglasses", "pose")
NUM_SUBFACTORS = 4  # Directions in W per attribute.
ROW_GROUPS = ("coarse", "middle", "fine")

# Which rows each attribute reads.
_ATTRIBUTE_GROUP = {
    "smiling": "middle", "young": "middle", "male": "middle", "eyeglasses": "middle", "pose": "coarse",
}

# Nuisance factors: name -> row group. Each is N(0, 1) at psi = 1 and squashed into its range.
_NUISANCE: tuple[tuple[str, str], ...] = (
    ("head_width", "coarse"),  # Half-width of the head.
    ("face_length", "coarse"),  # Half-height of the head.
    ("jaw", "coarse"),  # Narrow pointed chin .. square jaw.
    ("face_y", "coarse"),  # Vertical position of the head.
    ("hair_volume", "coarse"),  # How far the hair stands off the skull.
    ("parting", "coarse"),  # Side of the hair parting (gates a coupling: a smile turns the head to it).
    ("eye_size", "middle"),
    ("eye_spacing", "middle"),
    ("brow_height", "middle"),
    ("brow_weight", "middle"),
    ("nose_length", "middle"),
    ("nose_width", "middle"),
    ("mouth_width", "middle"),
    ("lip_fullness", "middle"),
    ("hair_length", "middle"),  # Added to the (mostly sex-driven) hair length.
    ("fringe", "middle"),  # How low the hairline comes.
    ("curl", "middle"),  # Waviness of the hair edge.
    ("beard", "middle"),  # Beard growth; shows on men only.
    ("glasses_shape", "middle"),  # Round .. rectangular frames.
    ("skin_tone", "fine"),
    ("skin_warmth", "fine"),
    ("hair_darkness", "fine"),
    ("hair_warmth", "fine"),
    ("background_top", "fine"),
    ("background_bottom", "fine"),
    ("background_light", "fine"),
    ("iris", "fine"),
    ("lip_tint", "fine"),
    ("frame_colour", "fine"),
    ("shirt_colour", "fine"),
    ("shirt_light", "fine"),
)

# All factors in order: the attributes' subfactors `<attr>.<j>`, then the nuisance factors.
FACTORS: tuple[tuple[str, str], ...] = tuple(
    (f"{attr}.{j}", _ATTRIBUTE_GROUP[attr]) for attr in ATTRIBUTES for j in range(NUM_SUBFACTORS)
) + _NUISANCE
_FACTOR_INDEX = {name: idx for idx, (name, _) in enumerate(FACTORS)}


class Coupling(NamedTuple):
    """An instance-dependent term `gain * driver * gate(sharpness * person)` added to `target`'s logit."""

    target: str  # Attribute whose logit receives the term.
    driver: str  # Factor the term is proportional to (a subfactor of another attribute).
    person: str  # Factor of the person that scales it.
    gate: str  # 'sigmoid' (0..1: only some people) or 'tanh' (-1..1: opposite ways for different people).
    gain: float  # Default strength, stored in the buffer `coupling_gain`.
    story: str  # What it means.


COUPLINGS: tuple[Coupling, ...] = (
    Coupling("eyeglasses", "young.0", "male.3", "sigmoid", -1.2,
             "ageing brings eyeglasses, strongly for masculine faces and hardly for feminine ones"),
    Coupling("smiling", "male.0", "young.3", "sigmoid", -1.0,
             "among the young, feminine faces smile more; among the old, sex makes no difference"),
    Coupling("pose", "smiling.0", "parting", "tanh", 0.6,
             "a smile turns the head towards the side of the person's hair parting"),
    Coupling("young", "smiling.1", "male.2", "sigmoid", -0.8,
             "smiling ages masculine faces (crow's feet), not feminine ones"),
    Coupling("male", "young.1", "jaw", "sigmoid", -0.8,
             "ageing masculinises faces with a strong jaw"),
)

# Linear part of the logits, fitted (least squares on 400,000 latents) so that the labels at psi = 1
# match BIAS_TABLE with COUPLINGS at their default gains; bench/procedural_world.py reports the match.
# Row X of (I + _MIXING) is attribute X's direction in the attribute scores, so the attribute
# directions in W are not orthogonal. Which factors the couplings read is fixed by the code; their
# gains, the mixing, the biases and the palettes are buffers, so a state dict carries the world.
_MIXING: dict[tuple[str, str], float] = {
    ("smiling", "male"): -0.078,
    ("young", "male"): -0.032,
    ("young", "smiling"): 0.177,
    ("eyeglasses", "young"): -0.552,
    ("eyeglasses", "male"): 0.075,
    ("smiling", "eyeglasses"): 0.036,
}
_BIAS: dict[str, float] = {"smiling": 0.002, "young": -0.571, "male": 0.142, "eyeglasses": 1.485, "pose": 0.0}
_GATE_SHARPNESS = 4.0  # Gates read sharpness * factor, so they are nearly 0/1 (or -1/1) already at psi = 0.5.

# What the calibration aims at: ground-truth labels of faces sampled at psi = 1.
BIAS_TABLE: dict[str, Any] = {
    "truncation_psi": 1.0,
    "frequencies": {"smiling": 0.50, "young": 0.70, "male": 0.45, "eyeglasses": 0.15, "pose": 0.50},
    # Phi coefficients (Pearson correlation of the binary labels); pairs not listed target 0.
    "phi": {
        "smiling|young": 0.0,
        "smiling|male": -0.15,
        "smiling|eyeglasses": 0.0,
        "smiling|pose": 0.0,
        "young|male": -0.12,
        "young|eyeglasses": -0.30,
        "young|pose": 0.0,
        "male|eyeglasses": 0.10,
        "male|pose": 0.0,
        "eyeglasses|pose": 0.0,
    },
    "conditionals": {
        "beard|female": 0.0,
        "beard|male": 0.35,
    },
    "notes": {
        "young|eyeglasses": "eyeglasses far more common among the old",
        "smiling|male": "smiling more common among women",
        "beard": "beards only on men (face parameter 'beard' > 0.5)",
        "pose": "True when the face is turned towards the image's right (yaw > 0)",
    },
}

# Visual response to the logits: steep near the label boundary, so the label can be read off the picture.
_SMILE_GAIN = 1.5  # smile = tanh(gain * L)
_AGE_GAIN = 1.6  # age = sigmoid(-gain * L)
_MALE_GAIN = 2.0  # masculinity = sigmoid(gain * L)
_GLASSES_GAIN = 3.0  # glasses = sigmoid(gain * L)
_YAW_GAIN = 1.2  # yaw = max_yaw * tanh(gain * L)
_MAX_YAW = 0.6  # radians

# Palettes, RGB in [0, 1]; a factor in (0, 1) reads a piecewise linear ramp through them.
_PALETTES: dict[str, list[list[float]]] = {
    "skin": [[0.98, 0.86, 0.76], [0.93, 0.75, 0.62], [0.80, 0.58, 0.43], [0.60, 0.41, 0.29],
             [0.38, 0.25, 0.18]],
    "hair_cool": [[0.88, 0.80, 0.62], [0.55, 0.45, 0.35], [0.28, 0.22, 0.18], [0.09, 0.08, 0.08]],
    "hair_warm": [[0.92, 0.74, 0.42], [0.72, 0.40, 0.18], [0.42, 0.22, 0.11], [0.16, 0.09, 0.06]],
    "grey_hair": [[0.80, 0.80, 0.82]],
    "background": [[0.55, 0.70, 0.85], [0.55, 0.80, 0.75], [0.75, 0.82, 0.55], [0.90, 0.82, 0.60],
                   [0.90, 0.65, 0.62], [0.78, 0.66, 0.85], [0.70, 0.70, 0.72]],
    "iris": [[0.30, 0.18, 0.10], [0.45, 0.32, 0.15], [0.35, 0.50, 0.30], [0.30, 0.50, 0.70],
             [0.50, 0.55, 0.60]],
    "lips": [[0.80, 0.42, 0.45], [0.75, 0.30, 0.35]],
    "frame": [[0.08, 0.08, 0.10], [0.35, 0.20, 0.10], [0.50, 0.10, 0.12], [0.10, 0.15, 0.40]],
    "shirt": [[0.20, 0.30, 0.60], [0.60, 0.15, 0.15], [0.15, 0.45, 0.30], [0.85, 0.85, 0.85],
              [0.25, 0.25, 0.28], [0.85, 0.60, 0.20]],
    "teeth": [[0.97, 0.96, 0.92]],
    "mouth": [[0.30, 0.08, 0.08]],
    "sclera": [[0.97, 0.97, 0.96]],
}


def bias_table() -> dict[str, Any]:
    """The biases the world is calibrated to, JSON-serialisable (for a pack's manifest).

    Returns:
        A deep copy of `BIAS_TABLE` with the coupling terms and the row roles added.
    """
    table = copy.deepcopy(BIAS_TABLE)
    table["couplings"] = [
        {"target": c.target, "driver": c.driver, "person": c.person, "gate": c.gate, "gain": c.gain,
         "story": c.story}
        for c in COUPLINGS
    ]
    table["row_roles"] = {
        "coarse": "pose and head shape",
        "middle": "facial features and the attributes smiling, young, male, eyeglasses",
        "fine": "colours: skin, hair, eyes, lips, frames, clothes, background",
    }
    return table


def row_groups(num_ws: int) -> dict[str, list[int]]:
    """Rows of a `w+` code in each group: coarse (first ~40 %), fine (last ~20 %, >= 1), middle (the rest).

    Args:
        num_ws: Rows of a `w+` code (at least 3).

    Returns:
        Group name -> row indices.
    """
    if num_ws < 3:
        raise ValueError(f"Need num_ws >= 3 for three row groups, got {num_ws}")
    num_coarse = max(1, round(0.4 * num_ws))
    num_fine = max(1, round(0.2 * num_ws))
    num_middle = num_ws - num_coarse - num_fine
    rows = list(range(num_ws))
    return {
        "coarse": rows[:num_coarse],
        "middle": rows[num_coarse : num_coarse + num_middle],
        "fine": rows[num_coarse + num_middle :],
    }


def _attribute_axes(
    basis: torch.Tensor, attribute_scales: Sequence[float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each attribute's axis in W, the unit sum of its subfactor directions (`basis` `[F, C]`, float64,
    orthonormal rows), and the checked standard deviations of W along the axes."""
    rows = [[_FACTOR_INDEX[f"{attr}.{j}"] for j in range(NUM_SUBFACTORS)] for attr in ATTRIBUTES]
    axes = torch.stack([basis[r].sum(0) / math.sqrt(NUM_SUBFACTORS) for r in rows])
    if attribute_scales is None:
        return axes.to(torch.float32), torch.ones([len(ATTRIBUTES)])
    values = [float(v) for v in attribute_scales]
    if len(values) != len(ATTRIBUTES) or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"attribute_scales needs {len(ATTRIBUTES)} positive numbers, got {attribute_scales}")
    return axes.to(torch.float32), torch.tensor(values)


# ----------------------------------------------------------------------------
# Mapping.


@record_init_kwargs
class ProceduralMapping(torch.nn.Module):
    """Z -> W: the identity (W is isotropic, `w_avg = 0`) or a stretch along the attribute axes
    (`stretch`), broadcast to `num_ws` rows, then truncation."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.
    w_avg: torch.Tensor
    attribute_axes: torch.Tensor
    attribute_scales: torch.Tensor

    def __init__(
        self,
        z_dim: int,  # Input latent (Z) dimensionality; must equal w_dim.
        c_dim: int,  # Conditioning label (C) dimensionality; must be 0.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        num_ws: int,  # Number of rows of the output.
    ) -> None:
        super().__init__()
        if z_dim != w_dim:
            raise ValueError(
                f"The procedural mapping keeps the dimension: need z_dim == w_dim, got {z_dim}, {w_dim}"
            )
        if c_dim != 0:
            raise ValueError(f"The procedural world is unconditional: need c_dim == 0, got {c_dim}")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.register_buffer("w_avg", torch.zeros([w_dim]))
        self.register_buffer("attribute_axes", torch.zeros([0, w_dim]), persistent=False)
        self.register_buffer("attribute_scales", torch.zeros([0]), persistent=False)

    def stretch(self, axes: torch.Tensor, scales: torch.Tensor) -> None:
        """Make W anisotropic: `w = M z`, `M = I + sum_a (s_a - 1) a a^T` for orthonormal axes `[A, w_dim]`
        and standard deviations `scales` `[A]` (the synthesis undoes M, so the faces stay the same)."""
        assert_shape(axes, [None, self.w_dim])
        assert_shape(scales, [axes.shape[0]])
        self.attribute_axes = axes.detach().clone()
        self.attribute_scales = scales.detach().clone()

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        **unused_kwargs: Any,
    ) -> torch.Tensor:
        """Map latents to `w+` and truncate towards `w_avg` as StyleGAN does.

        Args:
            z: Latents `[N, z_dim]`.
            c: Ignored (the world is unconditional); None or `[N, 0]`.
            truncation_psi: `w_avg.lerp(w, psi)`; 1 = none, 0 = every row becomes `w_avg`.
            truncation_cutoff: Truncate only rows `[:truncation_cutoff]`, None = all rows.
            **unused_kwargs: Accepted for interface compatibility (e.g. `skip_w_avg_update`).

        Returns:
            `ws` of shape `[N, num_ws, w_dim]`.
        """
        assert_shape(z, [None, self.z_dim])
        w = z.to(torch.float32)
        if self.attribute_axes.shape[0]:
            w = w + ((w @ self.attribute_axes.T) * (self.attribute_scales - 1)) @ self.attribute_axes
        ws = w.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, L, C]
        if truncation_psi != 1:
            if truncation_cutoff is None:
                ws = self.w_avg.lerp(ws, truncation_psi)
            else:
                head = self.w_avg.lerp(ws[:, :truncation_cutoff], truncation_psi)
                ws = torch.cat([head, ws[:, truncation_cutoff:]], dim=1)
        return ws


# ----------------------------------------------------------------------------
# Shapes: approximate signed distances (negative inside), in image units ([-1, 1] across).


def _sd_ellipse(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
                rx: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    """First-order distance to an axis-aligned ellipse: `f / |grad f|`, `f = (dx/rx)^2 + (dy/ry)^2 - 1`."""
    u = (x - cx) / rx
    v = (y - cy) / ry
    f = u * u + v * v - 1
    grad = 2 * torch.sqrt((u / rx) ** 2 + (v / ry) ** 2 + 1e-4)
    return f / grad


def _sd_segment(x: torch.Tensor, y: torch.Tensor, ax: torch.Tensor, ay: torch.Tensor, bx: torch.Tensor,
                by: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Distance to a capsule: the segment from a to b thickened by `radius`."""
    pax, pay = x - ax, y - ay
    bax, bay = bx - ax, by - ay
    h = ((pax * bax + pay * bay) / (bax * bax + bay * bay + 1e-8)).clamp(0, 1)
    return torch.sqrt((pax - bax * h) ** 2 + (pay - bay * h) ** 2 + 1e-8) - radius


def _sd_arc(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, half_width: torch.Tensor,
            lift: torch.Tensor, thickness: torch.Tensor | float) -> torch.Tensor:
    """Distance to a band of half-thickness `thickness` along `y = cy - lift * (dx / half_width)^2`.

    The band ends at `|dx| = half_width` with round caps; positive `lift` raises the ends (a smile).
    """
    dx = x - cx
    u = (dx / half_width).clamp(-1, 1)
    yc = cy - lift * u * u
    slope = 2 * lift * u / half_width
    along = (y - yc) / torch.sqrt(1 + slope * slope)
    beyond = torch.relu(dx.abs() - half_width)
    return torch.sqrt(along * along + beyond * beyond + 1e-8) - thickness


def _sd_box(x: torch.Tensor, y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, hx: torch.Tensor,
            hy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Distance to a rounded rectangle of half-sizes `hx, hy` and corner radius `radius`."""
    qx = (x - cx).abs() - hx + radius
    qy = (y - cy).abs() - hy + radius
    outside = torch.sqrt(torch.relu(qx) ** 2 + torch.relu(qy) ** 2 + 1e-8)
    inside = torch.minimum(torch.maximum(qx, qy), torch.zeros_like(qx))
    return outside + inside - radius


def _pixel_span(low: float, high: float, res: int) -> tuple[int, int]:
    """Pixel indices `[start, stop)` whose centres cover the image coordinates [low, high] (with a margin)."""
    start = max(0, math.floor((low + 1) * res / 2) - 1)
    stop = min(res, math.ceil((high + 1) * res / 2) + 1)
    return start, stop


def _ramp(palette: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Piecewise linear colour ramp: `palette [K, 3]`, `t [N]` in [0, 1] -> `[N, 3, 1, 1]`."""
    k = palette.shape[0]
    if k == 1:
        return palette[0].expand(t.shape[0], 3).reshape(-1, 3, 1, 1)
    pos = t.clamp(0, 1) * (k - 1)
    idx = pos.detach().floor().clamp(0, k - 2).long()
    frac = (pos - idx).unsqueeze(1)
    colour = palette[idx] * (1 - frac) + palette[idx + 1] * frac
    return colour.reshape(-1, 3, 1, 1)


def _over(img: torch.Tensor, colour: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Composite `colour` with coverage `alpha` over `img`."""
    return img + alpha * (colour - img)


def _paste(img: torch.Tensor, window: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """`img` `[N, C, H, W]` with `window` put at (row, col), out of place (autograd-safe)."""
    h, w = window.shape[-2:]
    middle = torch.cat([img[..., row : row + h, :col], window, img[..., row : row + h, col + w :]], dim=-1)
    return torch.cat([img[..., :row, :], middle, img[..., row + h :, :]], dim=-2)


# ----------------------------------------------------------------------------
# Synthesis.


@record_init_kwargs
class ProceduralSynthesis(torch.nn.Module):
    """W+ -> image: decode the face parameters from the row groups, then render them."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.
    directions: torch.Tensor
    attribute_mixing: torch.Tensor
    attribute_bias: torch.Tensor
    coupling_gain: torch.Tensor
    gate_sharpness: torch.Tensor
    attribute_axes: torch.Tensor
    attribute_scales: torch.Tensor
    row_weights: torch.Tensor
    factor_group: torch.Tensor

    def __init__(
        self,
        w_dim: int,  # Intermediate latent (W) dimensionality.
        img_resolution: int,  # Output image resolution, a power of two >= 8.
        img_channels: int = 3,  # Number of color channels; must be 3.
        seed: int = 0,  # Seed of the fixed random geometry (the factor directions in W).
        edge_width: float = 1.0,  # Width of the anti-aliased edges in pixels (10 % to 90 % coverage).
        attribute_scales: Sequence[float] | None = None,  # Std of W along each attribute axis (None: 1).
    ) -> None:
        super().__init__()
        if img_resolution < 8 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        if img_channels != 3:
            raise ValueError(f"The procedural world renders RGB: need img_channels == 3, got {img_channels}")
        if w_dim < len(FACTORS):
            raise ValueError(f"Need w_dim >= {len(FACTORS)} (one direction per factor), got {w_dim}")
        if not edge_width > 0:
            raise ValueError(f"edge_width must be positive, got {edge_width}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_ws = 2 * int(math.log2(img_resolution)) - 2
        self.edge_softness = edge_width * (2 / img_resolution) / (2 * math.log(9))  # Logistic scale.
        self.face_window = (_pixel_span(-0.48, 0.5, img_resolution), _pixel_span(-0.64, 0.64, img_resolution))

        # Fixed geometry: orthonormal factor directions in W.
        gen = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn([w_dim, len(FACTORS)], generator=gen, dtype=torch.float64))
        self.register_buffer("directions", basis.T.contiguous().to(torch.float32))  # [F, C]
        axes, scales = _attribute_axes(basis.T, attribute_scales)
        self.anisotropic = attribute_scales is not None
        self.register_buffer("attribute_axes", axes, persistent=False)  # [A, C], derived from `seed`
        self.register_buffer("attribute_scales", scales, persistent=False)  # [A]

        # Attribute logits: linear part and couplings.
        num_attrs = len(ATTRIBUTES)
        mixing = torch.eye(num_attrs)
        for (row, col), value in _MIXING.items():
            mixing[ATTRIBUTES.index(row), ATTRIBUTES.index(col)] = value
        self.register_buffer("attribute_mixing", mixing)  # [A, A]
        self.register_buffer("attribute_bias", torch.tensor([_BIAS[a] for a in ATTRIBUTES]))  # [A]
        self.register_buffer("coupling_gain", torch.tensor([c.gain for c in COUPLINGS]))  # [K]
        self.register_buffer("gate_sharpness", torch.tensor(_GATE_SHARPNESS))
        for name, colours in _PALETTES.items():
            self.register_buffer(f"palette_{name}", torch.tensor(colours))

        # Derived bookkeeping (not in the state dict).
        groups = row_groups(self.num_ws)
        weights = torch.zeros([len(ROW_GROUPS), self.num_ws])
        for gidx, gname in enumerate(ROW_GROUPS):
            weights[gidx, groups[gname]] = 1 / len(groups[gname])
        self.register_buffer("row_weights", weights, persistent=False)  # [3, L]
        factor_group = torch.tensor([ROW_GROUPS.index(group) for _, group in FACTORS])
        self.register_buffer("factor_group", factor_group, persistent=False)  # [F]
        self._coupling_target = [ATTRIBUTES.index(c.target) for c in COUPLINGS]
        self._coupling_driver = [_FACTOR_INDEX[c.driver] for c in COUPLINGS]
        self._coupling_person = [_FACTOR_INDEX[c.person] for c in COUPLINGS]
        self._coupling_is_sigmoid = [c.gate == "sigmoid" for c in COUPLINGS]

    def _palette(self, name: str) -> torch.Tensor:
        palette: torch.Tensor = getattr(self, f"palette_{name}")
        return palette

    # Latent -> factors -> logits -> parameters.

    def factors(self, ws: torch.Tensor) -> torch.Tensor:
        """Project each row group's mean onto the factor directions.

        Args:
            ws: `[N, num_ws, w_dim]`.

        Returns:
            `[N, len(FACTORS)]`, N(0, 1) per factor at psi = 1.
        """
        assert_shape(ws, [None, self.num_ws, self.w_dim])
        group_means = torch.einsum("gl,nlc->ngc", self.row_weights, ws.to(torch.float32))  # [N, 3, C]
        readout = self.directions
        if self.anisotropic:  # Undo the mapping's stretch: project onto M^-1 u_f (M is symmetric).
            shrink = 1 - 1 / self.attribute_scales  # [A]
            readout = readout - ((readout @ self.attribute_axes.T) * shrink) @ self.attribute_axes
        proj = torch.einsum("ngc,fc->ngf", group_means, readout)  # [N, 3, F]
        index = self.factor_group.view(1, 1, -1).expand(ws.shape[0], 1, -1)
        return proj.gather(1, index).squeeze(1)  # [N, F]

    def logits_from_factors(self, f: torch.Tensor) -> torch.Tensor:
        """Attribute logits from factors: linear mixing of the attribute scores plus the couplings.

        Args:
            f: `[N, len(FACTORS)]`.

        Returns:
            `[N, len(ATTRIBUTES)]`; positive means the attribute is present.
        """
        assert_shape(f, [None, len(FACTORS)])
        num_attrs = len(ATTRIBUTES)
        scores = f[:, : num_attrs * NUM_SUBFACTORS].reshape(-1, num_attrs, NUM_SUBFACTORS).sum(-1)
        scores = scores / math.sqrt(NUM_SUBFACTORS)  # [N, A]
        logits = scores @ self.attribute_mixing.T - self.attribute_bias  # [N, A]
        terms = []
        for k in range(len(COUPLINGS)):
            person = self.gate_sharpness * f[:, self._coupling_person[k]]
            gate = torch.sigmoid(person) if self._coupling_is_sigmoid[k] else torch.tanh(person)
            terms.append(self.coupling_gain[k] * f[:, self._coupling_driver[k]] * gate)
        targets = torch.nn.functional.one_hot(torch.tensor(self._coupling_target), num_attrs).to(f)  # [K, A]
        return logits + torch.stack(terms, dim=1) @ targets  # [N, A]

    def attribute_logits(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        """Ground-truth attribute logits.

        Args:
            ws: `[N, num_ws, w_dim]`.

        Returns:
            Attribute name -> `[N]` logit; the label is `logit > 0`.
        """
        logits = self.logits_from_factors(self.factors(ws))
        return {name: logits[:, idx] for idx, name in enumerate(ATTRIBUTES)}

    def face_parameters(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode the continuous face parameters, each squashed into its valid range.

        Args:
            ws: `[N, num_ws, w_dim]`.

        Returns:
            Name -> `[N]`: the attribute strengths `smile` (-1 frown .. 1 broad smile), `age` (0 .. 1),
            `masculinity` (0 .. 1), `glasses` (frame opacity 0 .. 1), `yaw` (radians, positive = turned
            towards the image's right), `beard` (0 .. 1), and the nuisance parameters in (0, 1)
            (`parting` in (-1, 1)).
        """
        f = self.factors(ws)
        return self._parameters_from_factors(f, self.logits_from_factors(f))

    def _parameters_from_factors(self, f: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        lg = {name: logits[:, idx] for idx, name in enumerate(ATTRIBUTES)}
        p = {name: torch.sigmoid(f[:, _FACTOR_INDEX[name]]) for name, _ in _NUISANCE}
        p["parting"] = torch.tanh(f[:, _FACTOR_INDEX["parting"]])
        p["smile"] = torch.tanh(_SMILE_GAIN * lg["smiling"])
        p["age"] = torch.sigmoid(-_AGE_GAIN * lg["young"])
        p["masculinity"] = torch.sigmoid(_MALE_GAIN * lg["male"])
        p["glasses"] = torch.sigmoid(_GLASSES_GAIN * lg["eyeglasses"])
        p["yaw"] = _MAX_YAW * torch.tanh(_YAW_GAIN * lg["pose"])
        # Beard: only where the face is clearly male.
        p["beard"] = torch.sigmoid(5 * lg["male"] - 2) * torch.sigmoid(3 * f[:, _FACTOR_INDEX["beard"]] + 0.3)
        return p

    # Rendering.

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", **unused_kwargs: Any) -> torch.Tensor:
        """Render `w+` codes.

        Args:
            ws: `[N, num_ws, w_dim]`.
            noise_mode: 'random', 'const' or 'none', accepted for interface compatibility. The world has
                no stochastic detail, so all three render the same, deterministic image.
            **unused_kwargs: Other StyleGAN synthesis options (`force_fp32`, ...), ignored.

        Returns:
            `[N, 3, img_resolution, img_resolution]` float32 images in [-1, 1].
        """
        assert noise_mode in NOISE_MODES
        return self.render(self.face_parameters(ws))

    def render(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Draw faces from their parameters (as returned by `face_parameters`).

        Large layers (background, hair, neck, clothes, head, beard) are drawn on the whole frame; the
        small facial features only inside the window `face_window` (rows, cols) that always contains
        them, which saves about half of the work.

        Args:
            params: Name -> `[N]`.

        Returns:
            `[N, 3, img_resolution, img_resolution]` float32 images in [-1, 1].
        """
        p = {k: v.reshape(-1, 1, 1, 1) for k, v in params.items()}
        n = params["age"].shape[0]
        res = self.img_resolution
        device = params["age"].device
        coords = (torch.arange(res, device=device, dtype=torch.float32) + 0.5) * (2 / res) - 1
        y = coords.view(1, 1, res, 1)
        x = coords.view(1, 1, 1, res)
        (r0, r1), (c0, c1) = self.face_window
        xw, yw = x[..., c0:c1], y[..., r0:r1, :]  # The face window.
        s = self.edge_softness

        def cover(d: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(-d / s)

        age, masc, smile, glasses = p["age"], p["masculinity"], p["smile"], p["glasses"]
        smile_pos = torch.relu(smile)
        yaw = p["yaw"]
        sin_yaw, cos_yaw = torch.sin(yaw), torch.cos(yaw)
        ones = torch.ones_like(yaw)

        # Colours.
        skin = _ramp(self._palette("skin"), params["skin_tone"])
        warmth = torch.tensor([1.0, 0.6, 0.2], device=device).view(1, 3, 1, 1)
        skin = skin * (0.94 + 0.12 * p["skin_warmth"] * warmth)
        skin = skin.lerp(skin.mean(1, keepdim=True), 0.25 * age)  # Duller with age.
        hair_base = _ramp(self._palette("hair_cool"), params["hair_darkness"]).lerp(
            _ramp(self._palette("hair_warm"), params["hair_darkness"]), p["hair_warmth"])
        grey = self._palette("grey_hair")[0].view(1, 3, 1, 1)
        hair = hair_base.lerp(grey, age.clamp(0, 1) ** 1.5 * 0.95)
        bg_top = _ramp(self._palette("background"), params["background_top"])
        bg_bottom = _ramp(self._palette("background"), params["background_bottom"])
        bg_bottom = bg_bottom * (0.7 + 0.3 * p["background_light"])
        lips = _ramp(self._palette("lips"), params["lip_tint"]).lerp(skin * 0.85, 0.25 + 0.45 * masc)
        frame = _ramp(self._palette("frame"), params["frame_colour"])
        shirt = _ramp(self._palette("shirt"), params["shirt_colour"]) * (0.6 + 0.4 * p["shirt_light"])
        iris = _ramp(self._palette("iris"), params["iris"])
        line = skin * 0.62  # Wrinkles and creases.
        dark = self._palette("mouth")[0].view(1, 3, 1, 1)

        # Geometry of the head.
        cx = torch.zeros_like(yaw)
        cy = 0.02 + 0.06 * (p["face_y"] - 0.5)
        rx = 0.37 + 0.07 * p["head_width"] + 0.02 * masc
        ry = 0.50 + 0.07 * p["face_length"] + 0.03 * age
        jaw = 0.35 * p["jaw"] + 0.65 * masc  # 0 pointed chin .. 1 square jaw.
        eye_y = cy - 0.05
        mouth_y = eye_y + 0.29 + 0.03 * age
        nose_y = eye_y + 0.15 + 0.04 * p["nose_length"]
        mouth_x = cx + rx * sin_yaw
        mouth_half = (0.10 + 0.035 * p["mouth_width"]) * (1 + 0.15 * smile_pos) * (0.75 + 0.25 * cos_yaw)
        spacing = 0.38 + 0.1 * p["eye_spacing"]

        def face_x(phi: torch.Tensor | float) -> torch.Tensor:
            """x of a point at angle phi around the head, after the turn."""
            return cx + rx * torch.sin(phi + yaw)

        # Background.
        img = bg_top.lerp(bg_bottom, (y + 1) / 2).expand(n, 3, res, res)

        # Hair behind the head: a cap and, for long hair, a fall to the shoulders.
        hair_len = torch.sigmoid(9.0 * (0.5 - masc) + 3.0 * (p["hair_length"] - 0.5))
        vol = (0.02 + 0.07 * p["hair_volume"]) * (1 - 0.4 * masc)
        hx = cx - 0.12 * sin_yaw
        back_cap = _sd_ellipse(x, y, hx, cy - 0.03, rx + vol, ry + 0.02 + vol * 0.6)
        back_cap = torch.maximum(back_cap, y - eye_y)  # Short hair ends above the ears.
        fall_bottom = cy - 0.2 + hair_len * (ry + 0.75)
        fall_top = eye_y - 0.1
        fall = _sd_box(x, y, hx, (fall_top + fall_bottom) / 2, rx + vol,
                       ((fall_bottom - fall_top) / 2).clamp(min=1e-3), 0.1 * ones)
        back = torch.minimum(back_cap, fall)
        img = _over(img, hair * 0.85, cover(back))

        # Neck and shoulders.
        neck = _sd_box(x, y, cx + 0.05 * sin_yaw, cy + ry + 0.05, 0.14 + 0.05 * masc, 0.3 * ones, 0.03 * ones)
        img = _over(img, skin * 0.8, cover(neck))
        shoulders = _sd_ellipse(x, y, cx, 1.28 * ones, 0.72 + 0.12 * masc, 0.45 * ones)
        img = _over(img, shirt, cover(shoulders))

        # Ears: the one the face turns away from goes behind the head.
        for side in (-1.0, 1.0):
            visible = torch.sigmoid(5 * torch.cos(side * math.pi / 2 + yaw) + 1.5)
            ear_x = cx + side * rx * cos_yaw * 0.97
            ear = _sd_ellipse(x, y, ear_x, eye_y + 0.07, 0.02 + 0.04 * visible, 0.085 * ones)
            img = _over(img, skin * 0.88, cover(ear) * visible)

        # Head: wider jaw for square faces, shaded towards the sides and away from the turn.
        below = torch.relu(y - cy) / ry
        head_rx = rx * (1 - (0.55 - 0.35 * jaw) * below * below).clamp(min=0.2)
        head = _sd_ellipse(x, y, cx, cy, head_rx, ry)
        rel_x = (x - mouth_x) / rx
        shade = 1 - 0.14 * rel_x * rel_x - 0.08 * torch.relu(-(x - cx) * sin_yaw / rx)
        inside = cover(head)
        img = _over(img, skin * shade.clamp(0.5, 1.1), inside)

        # Beard: around the mouth, rising to sideburns at the sides; only men have one (see `beard`).
        side_x = torch.relu((x - mouth_x).abs() / rx - 0.4)
        beard_region = torch.maximum(head + 0.005, mouth_y - 0.06 - 0.25 * side_x - y)
        beard_colour = hair_base.lerp(grey, age * 0.8) * 0.9
        img = _over(img, beard_colour, cover(beard_region) * p["beard"] ** 2 * 0.95)

        # Facial features, in the face window.
        face = self._render_features(
            img[..., r0:r1, c0:c1], xw, yw, cover, p,
            inside=inside[..., r0:r1, c0:c1], face_x=face_x, line=line, skin=skin, hair_base=hair_base,
            grey=grey, iris=iris, lips=lips, dark=dark, eye_y=eye_y, nose_y=nose_y, mouth_x=mouth_x,
            mouth_y=mouth_y, mouth_half=mouth_half, spacing=spacing, rx=rx, cx=cx,
        )
        img = _paste(img, face, r0, c0)

        # Hair in front: the cap above the hairline and, for long hair, locks framing the face.
        hairline = (cy - ry * 0.6 + 0.14 * p["fringe"] * (1 - 0.5 * masc) + 0.1 * age * masc
                    + 0.08 * p["parting"] * (x - hx) / rx
                    + 0.012 * p["curl"] * torch.sin(40 * x))
        cap = torch.maximum(_sd_ellipse(x, y, hx, cy - 0.02, rx + vol * 0.7, ry + vol * 0.5), y - hairline)
        opening_face = _sd_ellipse(x, y, cx + 0.3 * rx * sin_yaw, cy + 0.06, rx * 0.82, ry * 0.95)
        locks = torch.maximum(torch.maximum(back, -opening_face), y - fall_bottom + 0.02)
        front = torch.minimum(cap, locks + 0.2 * (1 - hair_len) * (1 - hair_len))
        img = _over(img, hair, cover(front))

        # Eyeglasses: lenses, rims, bridge and temples, in the face window.
        rim_thick = max(0.5 * (2 / res), 0.012)
        shape = p["glasses_shape"]
        win = img[..., r0:r1, c0:c1]
        rims = []
        for side in (-1.0, 1.0):
            foreshort = torch.cos(side * spacing + yaw).clamp(min=0.15)
            gw = (0.085 + 0.015 * shape) * foreshort + 0.012
            gh = 0.06 + 0.01 * shape
            ring = _sd_box(xw, yw, face_x(side * spacing), eye_y + 0.005, gw, gh,
                           torch.minimum(gw, gh) * (1 - 0.6 * shape))
            rims.append(ring)
            win = _over(win, torch.full_like(frame, 0.85), cover(ring) * glasses * 0.15)
        rim = torch.minimum(rims[0].abs(), rims[1].abs()) - rim_thick
        bridge = _sd_segment(xw, yw, face_x(-spacing) + 0.06, eye_y - 0.01, face_x(spacing) - 0.06,
                             eye_y - 0.01, rim_thick)
        temples = [
            _sd_segment(xw, yw, face_x(side * spacing * 2.0), eye_y - 0.01, cx + side * rx * cos_yaw,
                        eye_y + 0.02, rim_thick)
            for side in (-1.0, 1.0)
        ]
        frames_d = torch.minimum(torch.minimum(rim, bridge), torch.minimum(*temples))
        win = _over(win, frame, cover(frames_d) * glasses)
        img = _paste(img, win, r0, c0)

        return (img * 2 - 1).clamp(-1, 1)

    def _render_features(
        self, img: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cover: Any, p: dict[str, torch.Tensor], *,
        inside: torch.Tensor, face_x: Any, line: torch.Tensor, skin: torch.Tensor, hair_base: torch.Tensor,
        grey: torch.Tensor, iris: torch.Tensor, lips: torch.Tensor, dark: torch.Tensor, eye_y: torch.Tensor,
        nose_y: torch.Tensor, mouth_x: torch.Tensor, mouth_y: torch.Tensor, mouth_half: torch.Tensor,
        spacing: torch.Tensor, rx: torch.Tensor, cx: torch.Tensor,
    ) -> torch.Tensor:
        """Wrinkles, eyes, brows, cheeks, nose and mouth over `img` (the face window, with its `x`, `y`)."""
        age, masc, smile = p["age"], p["masculinity"], p["smile"]
        smile_pos = torch.relu(smile)
        yaw = p["yaw"]
        sin_yaw, cos_yaw = torch.sin(yaw), torch.cos(yaw)
        ones = torch.ones_like(yaw)

        # Age: forehead lines and nasolabial folds (the folds also deepen with a smile).
        wrinkle = torch.clamp((age - 0.3) / 0.5, 0, 1) * inside
        for k in range(3):
            d = _sd_arc(x, y, mouth_x, eye_y - 0.17 - 0.055 * k, 0.15 * cos_yaw + 0.04, 0.02 * ones, 0.008)
            img = _over(img, line, cover(d) * wrinkle * 0.7)
        for side in (-1.0, 1.0):
            d = _sd_segment(x, y, face_x(side * 0.22), nose_y - 0.02, mouth_x + side * (mouth_half + 0.035),
                            mouth_y + 0.04, 0.008)
            img = _over(img, line, cover(d) * (wrinkle * 0.8 + 0.25 * smile_pos * inside))

        # Eyes (narrowed by a smile), eye bags, crow's feet and brows.
        eye_open = (0.034 + 0.012 * p["eye_size"]) * (1 - 0.35 * smile_pos) * (1 - 0.15 * age)
        for side in (-1.0, 1.0):
            foreshort = torch.cos(side * spacing + yaw).clamp(min=0.15)
            ex = face_x(side * spacing)
            ew = (0.065 + 0.02 * p["eye_size"]) * foreshort
            bag = _sd_arc(x, y, ex, eye_y + eye_open + 0.03, ew * 0.9, -0.015 * ones, 0.008)
            img = _over(img, line, cover(bag) * torch.clamp((age - 0.4) / 0.4, 0, 1) * 0.8)
            corner = ex + side * ew * 1.15
            crow = _sd_segment(x, y, corner, eye_y, corner + side * 0.05, eye_y - 0.02, 0.006)
            img = _over(img, line, cover(crow) * wrinkle * 0.8)
            white = cover(_sd_ellipse(x, y, ex, eye_y, ew, eye_open))
            img = _over(img, self._palette("sclera")[0].view(1, 3, 1, 1), white)
            ir = 0.03 + 0.004 * p["eye_size"]
            ix = ex + 0.35 * ew * sin_yaw / foreshort.clamp(min=0.5)
            img = _over(img, iris, cover(_sd_ellipse(x, y, ix, eye_y, ir * foreshort, ir)) * white)
            pupil = _sd_ellipse(x, y, ix, eye_y, ir * 0.45 * foreshort, ir * 0.45)
            img = _over(img, iris * 0.2, cover(pupil) * white)
            lash = 0.006 + 0.01 * (1 - masc)
            lid = _sd_arc(x, y, ex, eye_y - eye_open * 0.8, ew * 1.05, eye_open * 0.25, lash)
            img = _over(img, hair_base * 0.4, cover(lid))
            brow_y = eye_y - 0.085 - 0.035 * p["brow_height"] + 0.02 * masc
            brow_thick = 0.009 + 0.012 * masc + 0.008 * p["brow_weight"]
            brow = _sd_arc(x, y, ex + side * 0.01, brow_y, ew * 1.15, 0.018 * (1 - masc) - 0.01, brow_thick)
            img = _over(img, hair_base.lerp(grey, age * 0.7) * 0.8, cover(brow) * 0.9)

        # Smile: cheeks lift and flush.
        flush = skin * torch.tensor([1.0, 0.75, 0.75], device=img.device).view(1, 3, 1, 1)
        for side in (-1.0, 1.0):
            cheek = _sd_ellipse(x, y, face_x(side * 0.5), mouth_y - 0.08, 0.07 * ones, 0.05 * ones)
            img = _over(img, flush, torch.sigmoid(-cheek / 0.03) * 0.35 * smile_pos * inside)

        # Nose: bridge line (stronger when turned), tip shadow and nostrils.
        tip_x = cx + (rx + 0.05 + 0.03 * p["nose_length"]) * sin_yaw
        bridge = _sd_segment(x, y, mouth_x, eye_y + 0.03, tip_x, nose_y, 0.008)
        img = _over(img, line, cover(bridge) * (0.25 + 0.9 * torch.abs(sin_yaw)).clamp(max=1))
        nose_hw = 0.03 + 0.025 * p["nose_width"] + 0.01 * masc
        for side in (-1.0, 1.0):
            nostril_x = tip_x + side * nose_hw * cos_yaw
            nostril = _sd_ellipse(x, y, nostril_x, nose_y + 0.012, 0.013 * ones, 0.009 * ones)
            img = _over(img, skin * 0.45, cover(nostril) * 0.9)
        tip = _sd_arc(x, y, tip_x, nose_y + 0.025, nose_hw * 0.8, -0.008 * ones, 0.006)
        img = _over(img, line, cover(tip) * 0.7)

        # Mouth: lips, the corners lifted by a smile (lowered by a frown), opened wide by a broad smile.
        lift = 0.08 * smile_pos - 0.015 * torch.relu(-smile)  # A frown is milder than a smile.
        fullness = (0.012 + 0.018 * p["lip_fullness"] + 0.012 * (1 - masc)) * (1 - 0.3 * age)
        img = _over(img, lips, cover(_sd_arc(x, y, mouth_x, mouth_y, mouth_half, lift, fullness)))
        opening = 0.05 * torch.sigmoid(8 * (smile - 0.35))
        u = ((x - mouth_x) / mouth_half).clamp(-1, 1)
        centre = mouth_y - lift * u * u
        bulge = 1 - u * u
        gap = torch.maximum(centre - opening * 0.5 * bulge - y, y - centre - opening * bulge)
        gap = torch.maximum(gap, (x - mouth_x).abs() - mouth_half * 0.92)
        img = _over(img, dark, cover(gap))
        teeth = torch.maximum(gap, y - (centre + opening * 0.25 * bulge))
        img = _over(img, self._palette("teeth")[0].view(1, 3, 1, 1), cover(teeth))
        seam = _sd_arc(x, y, mouth_x, mouth_y, mouth_half * 0.95, lift, 0.006)
        return _over(img, dark, cover(seam) * 0.8)


# ----------------------------------------------------------------------------
# Generator.


@record_init_kwargs
class ProceduralGenerator(torch.nn.Module):
    """The procedural face world as a StyleGAN generator: `mapping` (z, c) -> ws, `synthesis` ws -> image."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.

    def __init__(
        self,
        z_dim: int = 512,  # Input latent (Z) dimensionality; equals w_dim (identity or stretch mapping).
        c_dim: int = 0,  # Conditioning label (C) dimensionality; must be 0.
        w_dim: int = 512,  # Intermediate latent (W) dimensionality.
        img_resolution: int = 64,  # Output resolution, a power of two >= 8.
        img_channels: int = 3,  # Number of output color channels; must be 3.
        seed: int = 0,  # Seed of the fixed random geometry (directions in W).
        edge_width: float = 1.0,  # Width of anti-aliased edges in pixels.
        attribute_scales: Sequence[float] | None = None,  # Std of W along each attribute axis (None: 1).
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = ProceduralSynthesis(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, seed=seed,
            edge_width=edge_width, attribute_scales=attribute_scales,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = ProceduralMapping(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws)
        if attribute_scales is not None:
            self.mapping.stretch(self.synthesis.attribute_axes, self.synthesis.attribute_scales)

    @property
    def w_avg(self) -> torch.Tensor:
        """The mean of W, `[w_dim]` (the buffer `mapping.w_avg`; zero: W is centred on it)."""
        return self.mapping.w_avg

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        **synthesis_kwargs: Any,
    ) -> torch.Tensor:
        """Sample images: `synthesis(mapping(z, c, truncation_psi, truncation_cutoff), **synthesis_kwargs)`.

        Args:
            z: Latents `[N, z_dim]`.
            c: Ignored (None or `[N, 0]`).
            truncation_psi: Truncation towards `w_avg`, 1 = none.
            truncation_cutoff: Truncate only the first this many rows of ws, None = all.
            **synthesis_kwargs: For `ProceduralSynthesis.forward`, e.g. `noise_mode='const'`.

        Returns:
            `[N, 3, img_resolution, img_resolution]` float32 images in [-1, 1].
        """
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        img: torch.Tensor = self.synthesis(ws, **synthesis_kwargs)
        return img

    def face_parameters(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        """Ground truth: the continuous face parameters of `ws` `[N, num_ws, w_dim]` by name."""
        return self.synthesis.face_parameters(ws)

    def attribute_logits(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        """Ground truth: attribute name -> `[N]` logit of `ws` `[N, num_ws, w_dim]`, differentiable."""
        return self.synthesis.attribute_logits(ws)

    def attribute_labels(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        """Ground truth: attribute name -> `[N]` bool label (`logit > 0`) of `ws` `[N, num_ws, w_dim]`.

        `pose` is True when the face is turned towards the image's right (yaw > 0), a binary label like
        the official IALS pose classifier's.
        """
        with torch.no_grad():
            return {name: logit > 0 for name, logit in self.attribute_logits(ws).items()}

    def describe_world(self) -> dict[str, Any]:
        """JSON-serialisable description of the world for a pack's manifest: bias table, couplings, rows."""
        table = bias_table()
        table["row_groups"] = row_groups(self.num_ws)
        table["coupling_gains"] = [float(v) for v in self.synthesis.coupling_gain]
        return table
