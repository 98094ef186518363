"""Measure two CPU speed-ups for the demo pack's build and edits, side by side.

1. The channels-last memory format for the convolutional networks, which the code uses on the CPU
   (`models.misc.conv_layout`), against the default layout (`conv_layout` replaced by the identity):
   one training step of a steering classifier (ResNet-18) and an evaluator (ResNet-34) at the build's
   width and batch, one encoder training step (latent and pixel loss through the renderer), and a
   steering classifier's forward and backward to the images on `--faces` faces (its part of an IALS
   gradient), and a 20-step edit of one demo-pack face as the service runs it (batch 1).
2. `torch.compile` of the procedural renderer (inductor, fused C++ kernels), which the code does not
   use: the renderer's forward and backward to `w+` on `--faces` faces, the backward being most of an
   IALS gradient. The compile time is measured cold (an empty inductor cache); every worker process
   would pay it for every input shape.

Each pair runs alternately, `--repeat` rounds; the script prints the median seconds of both and their
ratio.

Usage: python bench/cpu_speedups.py [--faces 200] [--repeat 3] [--threads 1] [--skip-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from models.demo_pack import DemoPackConfig, _classifiers, _new_encoder, _world
from models.training import sample_training_ws


@contextlib.contextmanager
def default_layout() -> Iterator[None]:
    """Run the networks in the default (NCHW) layout: `conv_layout` where they call it is the identity."""
    import models.inversion as inversion_module
    import models.networks.classifier as classifier_module
    import models.networks.encoder as encoder_module

    modules = (classifier_module, encoder_module, inversion_module)
    saved = [module.conv_layout for module in modules]
    for module in modules:
        module.conv_layout = lambda x: x  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, layout in zip(modules, saved, strict=True):
            module.conv_layout = layout  # type: ignore[attr-defined]


def in_default_layout(fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with default_layout():
            fn()

    return run


def timed(fn: Callable[[], object], calls: int = 3) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def side_by_side(name: str, base: Callable[[], object], other: Callable[[], object], repeat: int) -> None:
    base(), other()  # Warm-up.
    a, b = [], []
    for _ in range(repeat):
        a.append(timed(base))
        b.append(timed(other))
    ta, tb = statistics.median(a), statistics.median(b)
    print(f"{name}: {ta:.3f} s against {tb:.3f} s, ratio {tb / ta:.2f}", flush=True)


def render_backward(
    synthesis: Callable[..., torch.Tensor], ws: torch.Tensor, cotangent: torch.Tensor
) -> None:
    w = ws.clone().requires_grad_(True)
    images = synthesis(w, noise_mode="const")
    torch.autograd.grad(images, w, cotangent)


def classifier_step(arch: str, width: int, batch: int) -> Callable[[], None]:
    net = _classifiers(arch, width, 64, 0)["smiling"].train()
    x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)

    def step() -> None:
        loss = F.cross_entropy(net.logits(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def encoder_step(config: DemoPackConfig) -> Callable[[], None]:
    G = _world(config)
    encoder = _new_encoder(G, config).train()
    ws = sample_training_ws(
        G, n=config.encoder_batch_size, truncation_psi=config.encoder_psi,
        generator=torch.Generator().manual_seed(3), device="cpu",
    )
    with torch.no_grad():
        images = G.synthesis(ws, noise_mode="const")
    optimizer = torch.optim.Adam(encoder.parameters(), 1e-3)

    def step() -> None:
        predicted = encoder(images)
        pixel = (G.synthesis(predicted, noise_mode="const") - images).square().mean()
        loss = (predicted - ws).square().mean() + 10 * pixel
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def classifier_gradient(faces: torch.Tensor) -> Callable[[], None]:
    net = _classifiers("resnet18", DemoPackConfig().steering_width, 64, 0)["smiling"].eval()
    images = faces.detach().requires_grad_(True)

    def gradient() -> None:
        logits = net.logits(images)
        torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), images)

    return gradient


def pack_edit() -> Callable[[], None]:
    """A service edit: one demo-pack face, 20 steps, young with eyeglasses kept (batch 1 throughout,
    21 frames scored by the evaluators at the end)."""
    from models.editing import edit_with_pack, start_ws
    from models.pack import load_pack
    from service.config import DEFAULT_PACK_PATH

    pack = load_pack(DEFAULT_PACK_PATH, "cpu")
    ws = start_ws(pack, seed=3, truncation_psi=0.7)

    def run() -> None:
        edit_with_pack(pack, ws, primal="young", conditions=["eyeglasses"], direction_kind="interfacegan",
                       steps=20, step=0.2, lambda1=0.75, lambda2=0.0)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = DemoPackConfig()
    G = _world(config)
    ws = sample_training_ws(G, n=args.faces, truncation_psi=0.7, generator=torch.Generator().manual_seed(0),
                            device="cpu")
    cotangent = torch.randn(args.faces, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        faces = G.synthesis(ws, noise_mode="const")
    print(f"{args.faces} faces, {args.threads} thread(s), median of {args.repeat} rounds", flush=True)

    steering, evaluator = ("resnet18", config.steering_width), (config.evaluator_arch, config.evaluator_width)
    print("default layout against channels-last:", flush=True)
    for role, (arch, width) in (("steering", steering), ("evaluator", evaluator)):
        step = classifier_step(arch, width, config.batch_size)
        side_by_side(f"  {role} training step ({arch}, width {width}, batch {config.batch_size})",
                     in_default_layout(step), step, args.repeat)
    step = encoder_step(config)
    side_by_side(f"  encoder training step (width {config.encoder_width}, batch {config.encoder_batch_size})",
                 in_default_layout(step), step, args.repeat)
    gradient = classifier_gradient(faces)
    side_by_side("  steering classifier forward and backward to the images", in_default_layout(gradient),
                 gradient, args.repeat)
    edit = pack_edit()
    side_by_side("  one demo-pack face edited, 20 steps (batch 1)", in_default_layout(edit), edit,
                 args.repeat)

    if not args.skip_compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # A cold compile.
        compiled = torch.compile(G.synthesis, dynamic=False)
        start = time.perf_counter()
        render_backward(compiled, ws, cotangent)
        seconds = time.perf_counter() - start
        print(f"torch.compile of the renderer (forward and backward, cold): {seconds:.0f} s", flush=True)
        w = ws.clone().requires_grad_(True)
        eager_grad = torch.autograd.grad(G.synthesis(w, noise_mode="const"), w, cotangent)[0]
        compiled_grad = torch.autograd.grad(compiled(w, noise_mode="const"), w, cotangent)[0]
        rel = float((compiled_grad - eager_grad).norm() / eager_grad.norm())
        print(f"  relative difference of the compiled gradient: {rel:.1e}", flush=True)
        side_by_side("  renderer forward and backward, eager against compiled",
                     lambda: render_backward(G.synthesis, ws, cotangent),
                     lambda: render_backward(compiled, ws, cotangent), args.repeat)


if __name__ == "__main__":
    main()
