"""Time a 20-step IALS edit done the official code's way and done ours, side by side in one run.

The setting of the issue: a StyleGAN2 at 256 px with FFHQ's channel widths (random weights) and
full-width ResNet-18 steering classifiers, 1 primal + 1, 2 and 3 conditions, lambda1 = 0.75 and
lambda2 = 0 (so every attribute needs its instance-specific gradient at every step).

- official: per step, for every attribute one full forward and backward with weight gradients on
  (what `get_instance_specific_direction` does with its SGD optimizer), then after the loop every
  frame rendered again;
- ours: `models.ials.edit` (one frozen-weight forward per step, each attribute's gradient from that
  one graph, the frames kept from the gradient passes);
- floor: one frozen-weight forward plus one backward per attribute, timed alone.

Usage: python bench/edit_step.py [--steps 20] [--conditions 1 2 3] [--resolution 256] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from models.ials import EditAttribute, conditional_direction, edit
from models.networks.classifier import AttributeClassifier
from models.networks.stylegan2 import Generator
from models.sampling import sample_ws


def build_models(
    resolution: int, num_attributes: int, device: torch.device
) -> tuple[Generator, list[EditAttribute]]:
    torch.manual_seed(0)
    G = (
        Generator(
            z_dim=512,
            c_dim=0,
            w_dim=512,
            img_resolution=resolution,
            img_channels=3,
            mapping_kwargs={"num_layers": 8},
            synthesis_kwargs={
                "channel_base": 16384,
                "channel_max": 512,
                "num_fp16_res": 4,
                "conv_clamp": 256,
            },
        )
        .eval()
        .requires_grad_(False)
        .to(device)
    )
    attributes = []
    for idx in range(num_attributes):
        classifier = AttributeClassifier(arch="resnet18", width=64, input_resolution=256).eval()
        classifier.requires_grad_(False).to(device)
        direction = F.normalize(torch.randn(G.w_dim, generator=torch.Generator().manual_seed(idx)), dim=0)
        attributes.append(
            EditAttribute(name=f"attr{idx}", classifier=classifier, direction=direction.to(device))
        )
    return G, attributes


def official_edit(
    G: Generator,
    ws: torch.Tensor,
    attributes: Sequence[EditAttribute],
    *,
    steps: int,
    step: float,
    lambda1: float,
    lambda2: float,
    synthesis_kwargs: dict,
) -> torch.Tensor:
    """The official loop's cost structure: one full forward+backward per attribute with weight grads on."""
    for module in [G, *(a.classifier for a in attributes)]:
        module.requires_grad_(True)
    target = torch.ones(ws.shape[0], dtype=torch.long, device=ws.device)
    frames = [ws.clone()]
    w = ws.clone()
    try:
        for _ in range(steps):
            specific = []
            for attribute in attributes:
                offset = torch.zeros(ws.shape[0], 1, G.w_dim, device=ws.device, requires_grad=True)
                img = G.synthesis(w + offset, noise_mode="const", **synthesis_kwargs)
                loss = F.cross_entropy(attribute.classifier.logits(img), target)
                loss.backward()  # weight gradients too, as an optimizer step over the graph does
                grad = offset.grad.sum(dim=1)  # [N, w_dim]
                specific.append(-grad / grad.norm(dim=1, keepdim=True))
                for module in [G, attribute.classifier]:
                    module.zero_grad(set_to_none=True)
            primal, *conditions = attributes
            d_primal = lambda1 * primal.direction + (1 - lambda1) * specific[0]
            conds = []
            for attribute, d_specific in zip(conditions, specific[1:], strict=True):
                conds += [lambda2 * attribute.direction + (1 - lambda2) * d_specific, attribute.direction]
            d = conditional_direction(d_primal, conds)
            w = w + step * d.unsqueeze(1)
            frames.append(w.clone())
        with torch.no_grad():  # every frame rendered again
            for frame in frames:
                G.synthesis(frame, noise_mode="const", **synthesis_kwargs)
    finally:
        for module in [G, *(a.classifier for a in attributes)]:
            module.requires_grad_(False)
    return torch.stack(frames, dim=1)


def floor_step(
    G: Generator, ws: torch.Tensor, attributes: Sequence[EditAttribute], *, synthesis_kwargs: dict
) -> None:
    """One frozen-weight forward plus one backward per attribute."""
    w = ws.detach().requires_grad_(True)
    img = G.synthesis(w, noise_mode="const", **synthesis_kwargs)
    margins = [a.classifier.logits(img) for a in attributes]
    for idx, logits in enumerate(margins):
        torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), w, retain_graph=idx < len(margins) - 1)


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(
    G: Generator,
    ws: torch.Tensor,
    chosen: Sequence[EditAttribute],
    *,
    steps: int,
    official_kwargs: dict,
    ours_kwargs: dict,
) -> tuple[float, float, float]:
    """Seconds for the official-way edit, our edit, and one floor step (each after a 1-step warm-up)."""
    kwargs = dict(step=0.1, lambda1=0.75, lambda2=0.0)

    def official(n: int) -> None:
        official_edit(G, ws, chosen, steps=n, synthesis_kwargs=official_kwargs, **kwargs)

    def ours(n: int) -> None:
        edit(
            G,
            ws,
            primal=chosen[0],
            conditions=chosen[1:],
            steps=n,
            return_images=True,
            synthesis_kwargs=ours_kwargs,
            device=ws.device,
            **kwargs,
        )

    official(1)
    ours(1)
    t_official = timed(lambda: official(steps))
    t_ours = timed(lambda: ours(steps))
    t_floor = timed(lambda: floor_step(G, ws, chosen, synthesis_kwargs=ours_kwargs), repeats=3)
    return t_official, t_ours, t_floor


def modconv_kwargs(choice: str) -> dict:
    return {} if choice == "auto" else {"fused_modconv": choice == "true"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--conditions", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--official-fused-modconv",
        choices=["auto", "true", "false"],
        default="auto",
        help="modulated-conv path of the official way (auto: NVIDIA's choice, fused in eval)",
    )
    parser.add_argument(
        "--ours-fused-modconv",
        choices=["auto", "true", "false"],
        default="false",
        help="modulated-conv path of ours (false: no per-sample weight gradients; see README)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    official_kwargs = modconv_kwargs(args.official_fused_modconv)
    ours_kwargs = modconv_kwargs(args.ours_fused_modconv)
    G, attributes = build_models(args.resolution, 1 + max(args.conditions), device)
    ws = sample_ws(G, [1], truncation_psi=0.5, device=device)
    print(
        f"StyleGAN2 {args.resolution} px, FFHQ widths, num_ws={G.num_ws}; ResNet-18 classifiers at 256 px; "
        f"{args.steps} steps, lambda1=0.75, lambda2=0; fused_modconv official={args.official_fused_modconv} "
        f"ours={args.ours_fused_modconv}; device={device}, threads={torch.get_num_threads()}"
    )
    print(
        f"{'conds':>5} {'official s':>11} {'ours s':>8} {'speed-up':>9} {'ours/step':>10} "
        f"{'floor/step':>11} {'ours/floor':>11}"
    )
    for num_conditions in args.conditions:
        chosen = attributes[: 1 + num_conditions]
        t_official, t_ours, t_floor = measure(
            G, ws, chosen, steps=args.steps, official_kwargs=official_kwargs, ours_kwargs=ours_kwargs
        )
        per_step = t_ours / args.steps
        print(
            f"{num_conditions:>5} {t_official:>11.2f} {t_ours:>8.2f} {t_official / t_ours:>8.2f}x "
            f"{per_step:>10.3f} {t_floor:>11.3f} {per_step / t_floor:>10.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
