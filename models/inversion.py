"""GAN inversion into `w+`: an image-to-latent encoder and a batched optimisation, as pure functions.

- `train_encoder`: trains a `LatentEncoder` on fresh `(G.synthesis(ws), ws)` pairs, plain `w` and
  style-mixed `w+` codes, with a latent loss and an image reconstruction loss through the generator.
- `ClassifierPerceptual`, `VGG16Perceptual`: LPIPS-style perceptual distances (unit-normalised
  channels, squared differences averaged over space, summed over layers, no learned weights). The
  default is built from a pack's own steering classifiers, so every pack has one with no download; the
  VGG16 variant reads an operator-provided torchvision-style state dict with `weights_only=True`.
- `invert`: Adam in `w+` for a batch at once, from start codes (an encoder's) or `w_avg`: pixel MSE
  plus perceptual loss, NVIDIA's projector's learning-rate ramps and latent noise ramp, optional noise
  optimisation with its regulariser, early stopping when the loss stops improving.
- `invert_with_pack`: `invert` with a pack's encoder, classifiers and an `EFFORTS` preset.

Progress is reported only through an optional `on_step(i, n)` callback; randomness only comes in
through an explicit `torch.Generator`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from models.misc import assert_shape, conv_layout
from models.networks.classifier import AttributeClassifier
from models.training import PsiSpec, _check_psi, _lr_factor

if TYPE_CHECKING:
    import os

    from models.networks.encoder import LatentEncoder
    from models.pack import ModelPack

__all__ = [
    "EFFORTS",
    "ClassifierPerceptual",
    "EncoderTraining",
    "InversionEffort",
    "InversionResult",
    "PerceptualNetwork",
    "VGG16Perceptual",
    "classifier_perceptual",
    "invert",
    "invert_with_pack",
    "load_vgg16_perceptual",
    "psnr",
    "sample_encoder_ws",
    "train_encoder",
]


class InvertibleGenerator(Protocol):
    """What inversion needs of a generator: StyleGAN's sizes, `w_avg`, `mapping` and `synthesis`."""

    z_dim: int
    c_dim: int
    w_dim: int
    num_ws: int
    img_resolution: int
    img_channels: int

    @property
    def w_avg(self) -> torch.Tensor: ...

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None, **kwargs: Any) -> torch.Tensor: ...

    def synthesis(self, ws: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


class InversionResult(NamedTuple):
    """What `invert` returns. N images, L = num_ws rows of width D."""

    ws: torch.Tensor  # [N, L, D] the inverted codes (each image's best step).
    reconstruction: torch.Tensor  # [N, C, H, W] G.synthesis(ws) clamped to [-1, 1].
    psnr: torch.Tensor  # [N] dB of the reconstruction, images mapped from [-1, 1] to [0, 1].
    perceptual_distance: torch.Tensor  # [N] by the perceptual network; NaN if none was given.
    losses: dict[str, list[float]]  # 'total', 'pixel', 'perceptual', 'noise': batch means per step.
    steps_run: int  # Optimiser steps taken (early stopping can end the run before `steps`).
    noise: dict[str, torch.Tensor] | None = None  # Buffer name -> [N, 1, r, r] optimised noise, or None.


class EncoderTraining(NamedTuple):
    """What `train_encoder` returns."""

    encoder: LatentEncoder  # The trained encoder, in eval mode.
    losses: dict[str, list[float]]  # 'total', 'latent', 'pixel', 'perceptual': value of every step.


# ----------------------------------------------------------------------------
# Perceptual distances.


def _unit_channels(x: torch.Tensor) -> torch.Tensor:
    """LPIPS' `normalize_tensor`: each pixel's feature vector divided by its norm."""
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)


class PerceptualNetwork(nn.Module):
    """An LPIPS-style distance: `d(a, b) = scale * sum_l mean_hw ||f_l(a) - f_l(b)||^2` per image.

    Subclasses implement `features(images) -> [f_l]`, unit-normalised over channels. Use it in eval mode;
    its own parameters never need gradients (gradients flow to the images only).
    """

    scale: float = 1.0

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised feature maps `[N, C_l, H_l, W_l]` of images `[N, 3, H, W]` in [-1, 1]."""
        raise NotImplementedError

    def distance_from_features(self, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
        """The distance `[N]` between two lists of features from `features`."""
        total = sum(
            ((fa - fb).square().sum(dim=1).mean(dim=(1, 2)) for fa, fb in zip(a, b, strict=True)),
            torch.zeros((), device=a[0].device),
        )
        return total * self.scale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The distance `[N]` between images `a` and `b`, `[N, 3, H, W]` in [-1, 1]."""
        return self.distance_from_features(self.features(a), self.features(b))


class ClassifierPerceptual(PerceptualNetwork):
    """Perceptual distance from the ResNet backbones of attribute classifiers, averaged over them.

    Each classifier sees the images through its own `preprocess`; the features are the outputs of its
    `layer1` .. `layer4` (or `layers`), unit-normalised over channels as LPIPS does. The classifiers are
    held by reference (a pack's, not copied).
    """

    def __init__(
        self,
        classifiers: Sequence[AttributeClassifier],  # Classifiers whose backbones give the features.
        layers: Sequence[str] = ("layer1", "layer2", "layer3", "layer4"),  # ResNet stages to compare.
    ) -> None:
        super().__init__()
        if not classifiers:
            raise ValueError("Need at least one classifier, got none")
        known = ("layer1", "layer2", "layer3", "layer4")
        if not layers or any(layer not in known for layer in layers):
            raise ValueError(f"layers must be a non-empty subset of {known}, got {list(layers)}")
        self.classifiers = nn.ModuleList(classifiers)
        self.layers = tuple(layers)
        self.scale = 1 / len(classifiers)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        assert_shape(images, [None, 3, None, None])
        out = []
        for classifier in self.classifiers:
            assert isinstance(classifier, AttributeClassifier)
            net: Any = classifier.net  # A torchvision-keyed ResNet.
            x = net.maxpool(net.relu(net.bn1(net.conv1(classifier.preprocess(images)))))
            for name in ("layer1", "layer2", "layer3", "layer4"):
                x = getattr(net, name)(x)
                if name in self.layers:
                    out.append(_unit_channels(x))
                if name == self.layers[-1]:
                    break
        return out


# torchvision's VGG16 `features`: conv widths, 'M' = 2x2 max-pool.
_VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
_VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: LPIPS' layers.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Perceptual(PerceptualNetwork):
    """LPIPS-style distance on torchvision's VGG16 `features` (relu1_2 .. relu5_3), without learned weights.

    Images in [-1, 1] are mapped to [0, 1], area-downsampled to 256 px if larger (as NVIDIA's projector
    does) and normalised with ImageNet's mean and std (torchvision's convention for its weights).
    Parameter names are torchvision's (`features.0.weight`, ...), so its state dict loads as is.
    """

    def __init__(self, max_resolution: int = 256) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        in_channels = 3
        for item in _VGG16_CONFIG:
            if item == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(item, int)
                modules += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_channels = item
        self.features_net = nn.Sequential(*modules)  # Indices match torchvision's `features`.
        self.max_resolution = max_resolution

    def state_dict_keys(self) -> list[str]:
        """The torchvision keys this network reads: `features.N.weight` and `features.N.bias`."""
        return [f"features.{key}" for key in self.features_net.state_dict()]

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        assert_shape(images, [None, 3, None, None])
        x = (images + 1) / 2
        if max(x.shape[2:]) > self.max_resolution:
            x = F.interpolate(x, size=(self.max_resolution, self.max_resolution), mode="area")
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device).reshape(1, 3, 1, 1)
        x = conv_layout((x - mean) / std)
        out = []
        for idx, module in enumerate(self.features_net):
            x = module(x)
            if idx in _VGG16_TAPS:
                out.append(_unit_channels(x))
            if idx == _VGG16_TAPS[-1]:
                break
        return out


def load_vgg16_perceptual(f: str | os.PathLike[str] | IO[bytes]) -> VGG16Perceptual:
    """Build a `VGG16Perceptual` from a torchvision-style VGG16 state dict (e.g. `vgg16-397923af.pth`).

    The file is read with `torch.load(f, weights_only=True, map_location='cpu')`, so nothing in it is
    executed. Keys `features.N.weight` / `features.N.bias` are used; others (`classifier.*`) are ignored.

    Args:
        f: An open binary file or a path.

    Returns:
        The network on the CPU, in eval mode, without parameter gradients.

    Raises:
        ValueError: If the file is not a state dict or lacks or misshapes a `features` tensor.
    """
    try:
        state = torch.load(f, weights_only=True, map_location="cpu")
    except Exception as err:  # Unpickling refusals and corrupt files come as several error types.
        raise ValueError(f"cannot read the VGG16 state dict: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"expected a state dict of tensors, got {type(state).__name__}")
    with torch.device("meta"):  # Shapes only: every weight comes from the file.
        network = VGG16Perceptual()
    own = network.features_net.state_dict()
    missing = [f"features.{key}" for key in own if f"features.{key}" not in state]
    if missing:
        raise ValueError(f"the VGG16 state dict lacks {missing}")
    loaded = {}
    for key, tensor in own.items():
        given = state[f"features.{key}"]
        if given.shape != tensor.shape:
            raise ValueError(f"features.{key}: expected {tuple(tensor.shape)}, got {tuple(given.shape)}")
        loaded[key] = given.to(torch.float32)
    network.features_net.load_state_dict(loaded, strict=True, assign=True)
    return network.eval().requires_grad_(False)


def classifier_perceptual(pack: ModelPack) -> ClassifierPerceptual:
    """The default perceptual distance of a pack: the backbones of its steering classifiers."""
    return ClassifierPerceptual([attribute.steering for attribute in pack.attributes.values()])


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio `[N]` in dB of images `[N, C, H, W]` in [-1, 1], mapped to [0, 1].

        PSNR = 10 log10(1 / mse),   mse = mean(((a + 1) / 2 - (b + 1) / 2)^2)
    """
    mse = ((a - b) / 2).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(1 / (mse + 1e-12))


# ----------------------------------------------------------------------------
# Encoder training.


def sample_encoder_ws(
    G: InvertibleGenerator,
    *,
    n: int,
    truncation_psi: PsiSpec,
    mixing_prob: float,
    generator: torch.Generator,
    device: torch.device | str,
) -> torch.Tensor:
    """Training codes for an encoder: plain `w` and style-mixed `w+` with rows from up to three `w`s.

        w_j = w_avg + psi_j * (mapping(z_j) - w_avg),  z_j ~ N(0, I),  psi_j ~ U[low, high],  j = 0, 1, 2
        ws[r] = w_0 for r < c1,  w_1 for c1 <= r < c2,  w_2 for r >= c2

    where, with probability `mixing_prob`, the cut rows `c1 <= c2` are drawn uniformly from
    [1, num_ws - 1] (so the code is split into two or three runs of rows, as StyleGAN's style mixing
    does), and otherwise `c1 = c2 = num_ws` (a plain `w` on every row). Inverted photos are `w+` codes
    whose rows differ, so an encoder must see such codes, not only plain `w`.

    Args:
        G: Generator with `mapping`, `w_avg`, `z_dim`, `c_dim`, `num_ws`, on `device`.
        n: Number of codes (>= 1).
        truncation_psi: A fixed psi, or `(low, high)` to draw one per `w`.
        mixing_prob: Probability in [0, 1] that a code is mixed.
        generator: Source of randomness (drawn on its device).
        device: Where the mapping runs and `ws` is returned.

    Returns:
        `[n, num_ws, w_dim]` float32 codes.

    Raises:
        ValueError: On n < 1, a bad psi range or mixing probability.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= mixing_prob <= 1:
        raise ValueError(f"mixing_prob must lie in [0, 1], got {mixing_prob}")
    low, high = _check_psi(truncation_psi)
    num_ws = G.num_ws
    gdev = generator.device
    z = torch.randn((3 * n, G.z_dim), generator=generator, device=gdev)  # [3N, Z]
    psi = low + (high - low) * torch.rand((3 * n, 1, 1), generator=generator, device=gdev)  # [3N, 1, 1]
    mixed = torch.rand((n, 1), generator=generator, device=gdev) < mixing_prob  # [N, 1]
    cuts = torch.randint(1, max(num_ws, 2), (n, 2), generator=generator, device=gdev).sort(dim=1).values
    cuts = torch.where(mixed, cuts, num_ws)  # [N, 2]

    c = torch.zeros((3 * n, G.c_dim), device=device)
    ws = G.mapping(z.to(device), c)  # [3N, L, D]
    w_avg = G.w_avg.to(device)
    ws = w_avg + psi.to(device) * (ws - w_avg)
    ws = ws.reshape(3, n, num_ws, G.w_dim)  # [3, N, L, D]
    rows = torch.arange(num_ws, device=gdev).reshape(1, -1)  # [1, L]
    source = (rows >= cuts[:, :1]).long() + (rows >= cuts[:, 1:]).long()  # [N, L] in {0, 1, 2}
    index = source.to(device).reshape(1, n, num_ws, 1).expand(1, n, num_ws, G.w_dim)
    return ws.gather(0, index).squeeze(0).to(torch.float32)  # [N, L, D]


def train_encoder(
    encoder: LatentEncoder,
    G: InvertibleGenerator,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    truncation_psi: PsiSpec,
    generator: torch.Generator,
    device: torch.device | str,
    mixing_prob: float = 0.5,
    latent_weight: float = 1.0,
    pixel_weight: float = 10.0,
    perceptual: PerceptualNetwork | None = None,
    perceptual_weight: float = 0.0,
    weight_decay: float = 0.0,
    warmup_steps: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> EncoderTraining:
    """Train an image -> `w+` encoder on fresh generated pairs.

    Each step draws a new batch: codes `ws` from `sample_encoder_ws` (plain and style-mixed),
    images `x = G.synthesis(ws, noise_mode='const')` under `torch.no_grad()`, and one Adam step on

        latent_weight * mean((E(x) - ws)^2)
        + pixel_weight * mean((G.synthesis(E(x)) - x)^2)
        + perceptual_weight * mean(perceptual(G.synthesis(E(x)), x))

    The latent loss anchors the code to the generator's distribution (and is all there is for a
    generator without gradients: set the other weights to 0); the image losses, taken through the
    frozen generator, weigh the directions of `w+` by what they change in the picture, which is what a
    good start code for the optimisation needs. The learning rate warms up linearly, then decays to 0
    on a cosine (as `models.training.train_classifiers`). The encoder's `w_avg` buffer is set to the
    generator's first; the encoder is trained in place and returned in eval mode.

    Args:
        encoder: `LatentEncoder` for G's sizes, on `device`.
        G: Generator (parameters frozen), on `device`.
        steps: Number of optimiser steps (>= 1).
        batch_size: Faces per step (>= 1).
        lr: Peak learning rate of Adam.
        truncation_psi: psi of the training codes, fixed or `(low, high)` drawn per `w`.
        generator: Source of all randomness (latents, psi, mixing).
        device: Where training runs.
        mixing_prob: Fraction of style-mixed codes.
        latent_weight: Weight of the latent MSE.
        pixel_weight: Weight of the image MSE through G (0 skips the rendering of the prediction).
        perceptual: Perceptual distance for the image loss, or None.
        perceptual_weight: Its weight.
        weight_decay: Adam's L2 weight decay.
        warmup_steps: Steps of linear warm-up; default 5 % of `steps` (at least 1).
        on_step: Called as `on_step(i, steps)` after step i = 1..steps.

    Returns:
        `EncoderTraining(encoder, losses)`.

    Raises:
        ValueError: On bad step count, batch size, learning rate, weights, psi or mixing probability,
            or an encoder whose sizes differ from the generator's.
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"Need steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    if min(latent_weight, pixel_weight, perceptual_weight) < 0:
        raise ValueError("Loss weights must be >= 0")
    if perceptual_weight > 0 and perceptual is None:
        raise ValueError("perceptual_weight > 0 needs a perceptual network")
    sizes = (encoder.num_ws, encoder.w_dim, encoder.img_channels)
    if sizes != (G.num_ws, G.w_dim, G.img_channels):
        raise ValueError(f"Encoder sizes (num_ws, w_dim, img_channels) {sizes} differ from the generator's")
    _check_psi(truncation_psi)
    warmup = max(1, round(0.05 * steps)) if warmup_steps is None else warmup_steps
    if warmup < 1:
        raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")

    with torch.no_grad():
        encoder.w_avg.copy_(G.w_avg.to(encoder.w_avg.device))
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _lr_factor(i, steps, warmup))
    use_image_loss = pixel_weight > 0 or perceptual_weight > 0
    losses: dict[str, list[float]] = {"total": [], "latent": [], "pixel": [], "perceptual": []}
    encoder.train()
    try:
        for i in range(steps):
            # Fresh pairs.
            with torch.no_grad():
                ws = sample_encoder_ws(
                    G,
                    n=batch_size,
                    truncation_psi=truncation_psi,
                    mixing_prob=mixing_prob,
                    generator=generator,
                    device=device,
                )  # [B, L, D]
                images = G.synthesis(ws, noise_mode="const")  # [B, C, H, W]

            # Losses.
            predicted = encoder(images)  # [B, L, D]
            latent = (predicted - ws).square().mean()
            zero = torch.zeros((), device=latent.device)
            pixel, perc = zero, zero
            if use_image_loss:
                rendered = G.synthesis(predicted, noise_mode="const")
                pixel = (rendered - images).square().mean()
                if perceptual is not None and perceptual_weight > 0:
                    perc = perceptual(rendered, images).mean()
            total = latent_weight * latent + pixel_weight * pixel + perceptual_weight * perc

            # Step.
            grads = torch.autograd.grad(total, params)
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            for name, value in (("total", total), ("latent", latent), ("pixel", pixel), ("perceptual", perc)):
                losses[name].append(float(value.detach()))
            if on_step is not None:
                on_step(i + 1, steps)
    finally:
        encoder.eval()
    return EncoderTraining(encoder=encoder, losses=losses)


# ----------------------------------------------------------------------------
# Optimisation.


def _noise_regularization(noise: dict[str, torch.Tensor]) -> torch.Tensor:
    """NVIDIA's projector's noise regulariser, per image: squared autocorrelation at every scale.

    For each map `[N, 1, r, r]`, down to 8x8 by 2x average pooling:
    `sum (mean(n * roll(n, 1, x)))^2 + (mean(n * roll(n, 1, y)))^2`, the means taken per image.
    """
    reg: torch.Tensor | None = None
    for buf in noise.values():
        x = buf
        while True:
            term = (x * torch.roll(x, shifts=1, dims=3)).mean(dim=(1, 2, 3)).square()
            term = term + (x * torch.roll(x, shifts=1, dims=2)).mean(dim=(1, 2, 3)).square()
            reg = term if reg is None else reg + term
            if x.shape[2] <= 8:
                break
            x = F.avg_pool2d(x, kernel_size=2)
    assert reg is not None
    return reg  # [N]


def _lr_ramp(step: int, end: int, steps: int, rampup: float, rampdown: float) -> float:
    """NVIDIA's projector's schedule: cosine ramp-down over the last `rampdown * steps` steps before
    `end`, linear ramp-up over the first `rampup * steps` (counted from step 1, so that step 0 moves)."""
    down_steps = max(1.0, rampdown * steps)
    ramp = min(1.0, (end - step) / down_steps)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return ramp * min(1.0, (step + 1) / max(1.0, rampup * steps))


def invert(
    G: InvertibleGenerator,
    images: torch.Tensor,
    *,
    start_ws: torch.Tensor | None = None,
    perceptual: PerceptualNetwork | None = None,
    steps: int,
    lr: float = 0.1,
    pixel_weight: float = 1.0,
    perceptual_weight: float = 1.0,
    lr_rampup: float = 0.05,
    lr_rampdown: float = 0.25,
    latent_noise: float = 0.0,
    latent_noise_ramp: float = 0.75,
    w_std: float | None = None,
    optimize_noise: bool = False,
    noise_weight: float = 1e5,
    patience: int | None = None,
    min_delta: float = 1e-3,
    synthesis_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, int], None] | None = None,
    device: torch.device | str,
) -> InversionResult:
    """Invert a batch of images into `w+` by Adam on the per-image losses (the official IALS baseline,
    with NVIDIA's projector's schedule).

    For every image n, with `x_n = G.synthesis(ws_n + noise_t)`:

        loss_n = pixel_weight * mean((x_n - target_n)^2)
                 + perceptual_weight * perceptual(x_n, target_n)
                 + noise_weight * noise_reg_n                         (only with `optimize_noise`)

    and Adam minimises `sum_n loss_n`. Adam is element-wise and the images do not interact, so each
    image follows exactly the path it would follow alone; the batch only shares the passes (and the
    early stop). The learning rate is `lr * ramp(t)` as in NVIDIA's projector: a linear ramp-up over
    `lr_rampup * steps`, a cosine ramp-down over the last `lr_rampdown * steps`. The optional latent
    noise `noise_t ~ N(0, (w_std * latent_noise * max(0, 1 - t / latent_noise_ramp)^2)^2)` is added
    to the code in the forward only, as NVIDIA's projector does to leave poor local minima.

    Noise (generators with `noise_const` buffers, e.g. StyleGAN2): with `optimize_noise`, every image
    gets its own copy of every noise map, started at `noise_const`, optimised with the code, penalised
    by NVIDIA's autocorrelation regulariser and renormalised to zero mean and unit variance after each
    step; it is passed to the synthesis in place of the buffers (`torch.func.functional_call`), so the
    generator is never changed. Renders with the returned `ws` alone (`noise_mode='const'`, as edits
    render) then differ from the reconstruction, which is why the presets leave it off.

    Early stopping: with `patience`, if the batch's best total loss has not dropped by a fraction
    `min_delta` within `patience` steps, the learning rate ramps down from there (over
    `lr_rampdown * steps` steps) and the run ends; if it was already ramping down it ends at once.
    Each image returns the code of its own lowest loss (with latent noise: lowest noisy loss).

    Args:
        G: Generator with `synthesis`, `w_avg`, `num_ws`, `w_dim`, on `device`, parameters frozen or not
            (only the codes' gradients are taken).
        images: Targets `[N, img_channels, img_resolution, img_resolution]` in [-1, 1].
        start_ws: Start codes `[N, w_dim]` or `[N, num_ws, w_dim]` (an encoder's); None = `w_avg`.
        perceptual: Perceptual distance, or None for pixel loss only.
        steps: Most optimiser steps (>= 0; 0 just renders the start codes).
        lr: Peak learning rate.
        pixel_weight: Weight of the pixel MSE (images in [-1, 1]).
        perceptual_weight: Weight of the perceptual distance.
        lr_rampup: Fraction of `steps` of linear warm-up.
        lr_rampdown: Fraction of `steps` of cosine ramp-down.
        latent_noise: Initial latent noise, in units of `w_std` (NVIDIA: 0.05); 0 = none.
        latent_noise_ramp: Fraction of `steps` after which the latent noise is 0.
        w_std: Spread of W, `sqrt(E ||w - w_avg||^2)`; needed with latent noise.
        optimize_noise: Optimise per-image noise maps (see above).
        noise_weight: Weight of the noise regulariser (NVIDIA: 1e5).
        patience: Steps without improvement before stopping; None = never stop early.
        min_delta: Relative improvement that counts.
        synthesis_kwargs: Extra keyword arguments of `G.synthesis`; `noise_mode` is 'const'.
        generator: Source of the latent noise (required with latent noise).
        on_step: Called as `on_step(i, steps)` after step i; once with `(steps, steps)` after an early stop.
        device: Where the computation runs.

    Returns:
        `InversionResult`; `ws` `[N, num_ws, w_dim]` detached, the reconstruction and its scores from one
        final render of those codes.

    Raises:
        ValueError: On bad hyperparameters or start codes.
    """
    num_ws, w_dim = G.num_ws, G.w_dim
    assert_shape(images, [None, G.img_channels, G.img_resolution, G.img_resolution])
    if steps < 0 or not lr > 0 or min(pixel_weight, perceptual_weight, noise_weight, latent_noise) < 0:
        raise ValueError(f"Need steps >= 0, lr > 0 and weights >= 0, got steps={steps}, lr={lr}")
    if perceptual_weight > 0 and perceptual is None:
        perceptual_weight = 0.0
    if latent_noise > 0 and (w_std is None or generator is None):
        raise ValueError("Latent noise needs w_std and a torch.Generator")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 or None, got {patience}")
    if not 0 <= min_delta < 1:
        raise ValueError(f"min_delta must lie in [0, 1), got {min_delta}")
    kwargs = {**(synthesis_kwargs or {}), "noise_mode": "const"}
    images = images.to(device=device, dtype=torch.float32)
    num = images.shape[0]

    # Start codes.
    if start_ws is None:
        start = G.w_avg.to(device, torch.float32).reshape(1, 1, w_dim).repeat(num, num_ws, 1)
    elif start_ws.ndim == 2 and tuple(start_ws.shape) == (num, w_dim):
        start = start_ws.to(device, torch.float32).unsqueeze(1).repeat(1, num_ws, 1)
    elif tuple(start_ws.shape) == (num, num_ws, w_dim):
        start = start_ws.to(device, torch.float32)
    else:
        raise ValueError(
            f"start_ws must have shape [{num}, {w_dim}] or [{num}, {num_ws}, {w_dim}], "
            f"got {tuple(start_ws.shape)}"
        )
    ws_opt = start.detach().clone().requires_grad_(True)  # [N, L, D]

    # Noise maps.
    noise: dict[str, torch.Tensor] = {}
    if optimize_noise:
        for name, buf in G.synthesis.named_buffers():  # type: ignore[attr-defined]
            if name.endswith("noise_const"):
                per_image = buf.detach().to(device, torch.float32).reshape(1, 1, *buf.shape[-2:])
                noise[name] = per_image.repeat(num, 1, 1, 1).requires_grad_(True)  # [N, 1, r, r]

    def render(codes: torch.Tensor, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        if maps:
            out: torch.Tensor = torch.func.functional_call(
                G.synthesis, maps, (codes,), kwargs, strict=False  # type: ignore[arg-type]
            )
            return out
        return G.synthesis(codes, **kwargs)

    with torch.no_grad():
        target_features = perceptual.features(images) if perceptual is not None else []
    params = [ws_opt, *noise.values()]
    optimizer = torch.optim.Adam(params, betas=(0.9, 0.999), lr=lr)
    best_loss = torch.full((num,), math.inf, device=device)
    best_ws = start.clone()
    best_noise = {name: buf.detach().clone() for name, buf in noise.items()}
    history: list[float] = []  # Best batch total so far, per step.
    losses: dict[str, list[float]] = {"total": [], "pixel": [], "perceptual": [], "noise": []}
    end = steps
    step = 0
    zeros = torch.zeros(num, device=device)

    def image_losses(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(total, pixel, perceptual, noise)` losses `[N]` of codes (with the current noise maps)."""
        synth = render(codes, noise)  # [N, C, H, W]
        pixel = (synth - images).square().flatten(1).mean(dim=1)  # [N]
        perc = zeros
        if perceptual is not None and perceptual_weight > 0:
            perc = perceptual.distance_from_features(perceptual.features(synth), target_features)  # [N]
        reg = _noise_regularization(noise) if noise else zeros  # [N]
        return pixel_weight * pixel + perceptual_weight * perc + noise_weight * reg, pixel, perc, reg

    def keep_best(per_image: torch.Tensor) -> None:
        nonlocal best_loss
        with torch.no_grad():
            better = per_image.detach() < best_loss
            best_loss = torch.where(better, per_image.detach(), best_loss)
            best_ws[better] = ws_opt.detach()[better]
            for name, buf in noise.items():
                best_noise[name][better] = buf.detach()[better]
    while step < end:
        # Schedule.
        t = step / max(1, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_ramp(step, end, steps, lr_rampup, lr_rampdown)
        codes = ws_opt
        if latent_noise > 0:
            assert w_std is not None and generator is not None
            scale = w_std * latent_noise * max(0.0, 1.0 - t / latent_noise_ramp) ** 2
            if scale > 0:
                draw = torch.randn(ws_opt.shape, generator=generator, device=generator.device)
                codes = ws_opt + draw.to(device) * scale

        # Per-image losses; the best code of every image (the loss is that of the code before the update).
        per_image, pixel, perc, reg = image_losses(codes)
        keep_best(per_image)

        # Step.
        grads = torch.autograd.grad(per_image.sum(), params)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buf in noise.values():
                buf -= buf.mean(dim=(1, 2, 3), keepdim=True)
                buf *= buf.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()
        for name, value in (("total", per_image), ("pixel", pixel), ("perceptual", perc), ("noise", reg)):
            losses[name].append(float(value.detach().mean()))
        step += 1
        if on_step is not None:
            on_step(step, steps)

        # Early stopping.
        history.append(float(best_loss.sum()))
        if patience is not None and step > patience and step < end:
            stalled = history[-1] >= (1 - min_delta) * history[-1 - patience]
            if stalled:
                down_steps = max(1, round(lr_rampdown * steps))
                end = step if end - step <= down_steps else step + down_steps
                patience = None  # Ramp down once, then run to the end.
    if step < steps and on_step is not None:
        on_step(steps, steps)
    if step > 0:  # The code after the last update.
        with torch.no_grad():
            keep_best(image_losses(ws_opt)[0])

    # Final render.
    with torch.no_grad():
        reconstruction = render(best_ws, best_noise).clamp(-1, 1)
        target = images.clamp(-1, 1)
        if perceptual is not None:
            distance = perceptual.distance_from_features(perceptual.features(reconstruction), target_features)
        else:
            distance = torch.full((num,), math.nan, device=device)
    return InversionResult(
        ws=best_ws.detach(),
        reconstruction=reconstruction,
        psnr=psnr(reconstruction, target),
        perceptual_distance=distance,
        losses=losses,
        steps_run=step,
        noise=best_noise if noise else None,
    )


# ----------------------------------------------------------------------------
# With a pack.


@dataclasses.dataclass(frozen=True)
class InversionEffort:
    """A preset of `invert`'s hyperparameters (see there); `steps = 0` is the encoder alone."""

    steps: int  # Most optimiser steps.
    lr: float = 0.01  # Peak learning rate (the official IALS baseline's).
    pixel_weight: float = 1.0  # Weight of the pixel MSE.
    perceptual_weight: float = 0.1  # Weight of the perceptual distance.
    patience: int | None = None  # Early stopping: steps without a `min_delta` improvement.
    min_delta: float = 1e-3  # Relative improvement that counts.


# Measured by bench/inversion.py on the procedural world (64 px, 10 rows): lr 0.01 beat 0.003 and
# 0.03-0.3 from both the encoder's codes and w_avg; from an encoder's codes 50 steps already add
# ~15 dB, 150 steps ~22 dB. Noise is never optimised: edits render with the generator's own noise.
EFFORTS: dict[str, InversionEffort] = {
    "encoder": InversionEffort(steps=0),
    "fast": InversionEffort(steps=50, patience=15),
    "balanced": InversionEffort(steps=150, patience=25),
    "best": InversionEffort(steps=500, patience=50, min_delta=2e-4),
}


def invert_with_pack(
    pack: ModelPack,
    images: torch.Tensor,
    *,
    effort: str = "balanced",
    perceptual: PerceptualNetwork | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> InversionResult:
    """Invert images with a pack: its encoder's codes (or `w_avg`), then an `EFFORTS` preset of `invert`.

    Args:
        pack: A loaded pack; everything runs on its device.
        images: `[N, 3, img_resolution, img_resolution]` in [-1, 1], aligned as the generator's faces.
        effort: A key of `EFFORTS`: 'encoder' (no optimisation), 'fast', 'balanced', 'best'.
        perceptual: Perceptual distance; default the backbones of the pack's steering classifiers.
        on_step: Called as `on_step(i, n)` during the optimisation.

    Returns:
        `InversionResult` (see `invert`).

    Raises:
        ValueError: On an unknown effort.
    """
    if effort not in EFFORTS:
        raise ValueError(f"Unknown effort {effort!r}; expected one of {list(EFFORTS)}")
    preset = EFFORTS[effort]
    device = pack.device
    G = pack.generator
    images = images.to(device=device, dtype=torch.float32)
    if perceptual is None:
        perceptual = classifier_perceptual(pack)
    start = None
    if pack.encoder is not None:
        with torch.no_grad():
            start = pack.encoder(images)  # [N, L, D]
    return invert(
        G,
        images,
        start_ws=start,
        perceptual=perceptual,
        steps=preset.steps,
        lr=preset.lr,
        pixel_weight=preset.pixel_weight,
        perceptual_weight=preset.perceptual_weight,
        patience=preset.patience,
        min_delta=preset.min_delta,
        synthesis_kwargs=pack.edit_synthesis_kwargs,
        on_step=on_step,
        device=device,
    )
