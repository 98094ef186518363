"""Measure what the demo pack's classifiers need: accuracy against ground truth per step budget, and time.

For each attribute of the procedural world it trains a steering classifier (ResNet-18, narrow) with
`models.training.train_classifier` on fresh renders, and reports its accuracy on `--num-eval` held-out
faces (psi = 1, never trained on, rendered once from their own seed) at a few checkpoints of the run
and at the end, with the training time. The checkpoints are taken mid-schedule (the learning rate has
not decayed yet), so they understate what a run of that length would reach. Then one evaluator config
(ResNet-50, narrow, another seed) for `--evaluator-attributes`.

For the errors it prints the ground-truth |logit| of the misclassified faces next to the population's:
faces close to the boundary (|logit| small) are ambiguous in the picture as well.

For what IALS needs from a steering classifier it prints the gradient alignment: the mean cosine, over
128 faces at psi 0.7, between the classifier's instance-specific direction (its normalised latent
gradient) and the gradient of the true logit. `--label-sharpness S` trains on graded targets
`sigmoid(S * true logit)` instead of hard labels (the demo pack uses 3): with hard labels the margin
saturates away from the boundary and its slope there has a random sign (pose: alignment about 0).

With `--shared` the steering classifiers of all attributes are trained together on shared renders
(`train_classifiers`, as a pack build would), and the total time is reported.

Usage: python bench/demo_classifiers.py [--steps 1000] [--width 16] [--batch-size 64] [--threads 2]
       [--shared] [--label-sharpness 3] [--evaluator-attributes eyeglasses] [--evaluator-arch resnet34]
       [--evaluator-width 12] [--evaluator-steps N]
"""

from __future__ import annotations

import argparse
import time

import torch

from models.ials import instance_specific_direction
from models.networks.classifier import AttributeClassifier
from models.networks.procedural import ATTRIBUTES, ProceduralGenerator
from models.training import sample_training_ws, train_classifier, train_classifiers


def gradient_alignment(
    G: ProceduralGenerator, classifier: AttributeClassifier, attribute: str, *, n: int = 128, seed: int = 77
) -> float:
    """Mean cosine between the classifier's instance-specific direction and the true logit's gradient."""
    ws = sample_training_ws(
        G, n=n, truncation_psi=0.7, generator=torch.Generator().manual_seed(seed), device="cpu"
    )
    offset = torch.zeros([n, G.w_dim], requires_grad=True)
    with torch.enable_grad():
        (truth,) = torch.autograd.grad(G.attribute_logits(ws + offset.unsqueeze(1))[attribute].sum(), offset)
    ours = instance_specific_direction(G, classifier, ws, target=1)
    return float((ours * torch.nn.functional.normalize(truth, dim=1)).sum(1).mean())


def render_eval_set(
    G: ProceduralGenerator, *, n: int, seed: int, batch_size: int = 250
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Held-out faces at psi = 1: images `[n, 3, H, W]` and ground-truth logits per attribute `[n]`."""
    gen = torch.Generator().manual_seed(seed)
    images, logits = [], []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            ws = sample_training_ws(
                G, n=min(batch_size, n - start), truncation_psi=1.0, generator=gen, device="cpu"
            )
            images.append(G.synthesis(ws, noise_mode="const"))
            logits.append(G.attribute_logits(ws))
    return torch.cat(images), {a: torch.cat([lg[a] for lg in logits]) for a in ATTRIBUTES}


def predict(classifier: AttributeClassifier, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Class-1 decisions `[N]` of an eval-mode classifier."""
    with torch.no_grad():
        return torch.cat(
            [
                classifier.logits(images[i : i + batch_size]).argmax(1) == 1
                for i in range(0, len(images), batch_size)
            ]
        )


def run_one(
    G: ProceduralGenerator,
    attribute: str,
    eval_images: torch.Tensor,
    eval_logits: dict[str, torch.Tensor],
    *,
    arch: str,
    width: int,
    steps: int,
    batch_size: int,
    lr: float,
    psi: tuple[float, float],
    seed: int,
    checkpoints: list[int],
    input_resolution: int | None = None,
    label_sharpness: float | None = None,
) -> dict[str, object]:
    """Train one classifier; accuracy at the checkpoints and at the end, training time, error analysis."""
    torch.manual_seed(seed)  # Only the weight initialisation of the classifier reads the global RNG.
    classifier = AttributeClassifier(arch, width=width, input_resolution=input_resolution or G.img_resolution)
    truth = eval_logits[attribute] > 0
    curve: dict[int, float] = {}
    eval_time = 0.0

    def on_step(i: int, n: int) -> None:
        nonlocal eval_time
        if i in checkpoints and i < n:
            start = time.perf_counter()
            classifier.eval()
            curve[i] = float((predict(classifier, eval_images) == truth).float().mean())
            classifier.train()
            eval_time += time.perf_counter() - start

    start = time.perf_counter()
    result = train_classifier(
        classifier,
        G,
        attribute,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        truncation_psi=psi,
        generator=torch.Generator().manual_seed(seed),
        device="cpu",
        label_sharpness=label_sharpness,
        on_step=on_step,
    )
    train_time = time.perf_counter() - start - eval_time
    predicted = predict(result.classifier, eval_images)
    wrong = predicted != truth
    curve[steps] = 1.0 - float(wrong.float().mean())
    abs_logit = eval_logits[attribute].abs()
    return {
        "curve": curve,
        "time": train_time,
        "loss_end": sum(result.losses[-50:]) / len(result.losses[-50:]),
        "num_wrong": int(wrong.sum()),
        "wrong_median_abs_logit": float(abs_logit[wrong].median()) if wrong.any() else float("nan"),
        "wrong_max_abs_logit": float(abs_logit[wrong].max()) if wrong.any() else float("nan"),
        "pop_median_abs_logit": float(abs_logit.median()),
        "near_boundary_frac": float((abs_logit < 0.1).float().mean()),
        "alignment": gradient_alignment(G, result.classifier, attribute),
    }


def run_shared(
    G: ProceduralGenerator,
    attributes: list[str],
    eval_images: torch.Tensor,
    eval_logits: dict[str, torch.Tensor],
    *,
    arch: str,
    width: int,
    steps: int,
    batch_size: int,
    lr: float,
    psi: tuple[float, float],
    seed: int,
    checkpoints: list[int],
) -> tuple[dict[str, dict[int, float]], float]:
    """Train all attributes on shared renders (`train_classifiers`); accuracy curves and total time."""
    torch.manual_seed(seed)  # Only the weight initialisation of the classifiers reads the global RNG.
    classifiers = {
        a: AttributeClassifier(arch, width=width, input_resolution=G.img_resolution) for a in attributes
    }
    curves: dict[str, dict[int, float]] = {a: {} for a in attributes}
    eval_time = 0.0

    def accuracies() -> None:
        for a, classifier in classifiers.items():
            was_training = classifier.training
            classifier.eval()
            curves[a][step_now] = float(
                (predict(classifier, eval_images) == (eval_logits[a] > 0)).float().mean()
            )
            classifier.train(was_training)

    step_now = 0

    def on_step(i: int, n: int) -> None:
        nonlocal eval_time, step_now
        if i in checkpoints and i < n:
            start = time.perf_counter()
            step_now = i
            accuracies()
            eval_time += time.perf_counter() - start

    start = time.perf_counter()
    train_classifiers(
        classifiers,
        G,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        truncation_psi=psi,
        generator=torch.Generator().manual_seed(seed),
        device="cpu",
        on_step=on_step,
    )
    total = time.perf_counter() - start - eval_time
    step_now = steps
    accuracies()
    return curves, total


def print_row(name: str, arch: str, width: int, res: dict[str, object]) -> None:
    curve = res["curve"]
    assert isinstance(curve, dict)
    points = "  ".join(f"{k:>5}:{100 * v:5.1f}" for k, v in sorted(curve.items()))
    print(
        f"{name:<11} {arch}/w{width:<3} {points}  time {res['time']:6.1f}s  loss {res['loss_end']:.3f}  "
        f"wrong {res['num_wrong']:>3} |logit| med {res['wrong_median_abs_logit']:.3f} "
        f"max {res['wrong_max_abs_logit']:.3f} (pop. med {res['pop_median_abs_logit']:.3f}, "
        f"{100 * float(res['near_boundary_frac']):.1f}% < 0.1)  "  # type: ignore[arg-type]
        f"gradient alignment {float(res['alignment']):+.3f}",  # type: ignore[arg-type]
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--psi-low", type=float, default=0.7)
    parser.add_argument("--psi-high", type=float, default=1.4)
    parser.add_argument("--num-eval", type=int, default=2000)
    parser.add_argument("--attributes", nargs="*", default=list(ATTRIBUTES))
    parser.add_argument("--evaluator-attributes", nargs="*", default=["eyeglasses"])
    parser.add_argument("--label-sharpness", type=float, default=None, help="graded targets (steering)")
    parser.add_argument("--evaluator-arch", default="resnet34")
    parser.add_argument("--evaluator-width", type=int, default=12)
    parser.add_argument("--evaluator-steps", type=int, default=None)
    parser.add_argument("--evaluator-resolution", type=int, default=None, help="input side (default: G's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", action="store_true", help="train all attributes on shared renders")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    G = ProceduralGenerator(img_resolution=64).eval()
    start = time.perf_counter()
    eval_images, eval_logits = render_eval_set(G, n=args.num_eval, seed=10_000 + args.seed)
    print(f"Rendered {args.num_eval} held-out faces (psi = 1) in {time.perf_counter() - start:.1f}s")
    psi = (args.psi_low, args.psi_high)
    checkpoints = sorted({args.steps // 4, args.steps // 2, 3 * args.steps // 4})
    print(
        f"steps {args.steps}, batch {args.batch_size}, lr {args.lr}, psi U{psi}, threads {args.threads}; "
        f"accuracy (%) at step (checkpoints are mid-schedule)"
    )

    if args.shared:
        curves, total = run_shared(
            G,
            args.attributes,
            eval_images,
            eval_logits,
            arch="resnet18",
            width=args.width,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            psi=psi,
            seed=args.seed,
            checkpoints=checkpoints,
        )
        for attribute, curve in curves.items():
            points = "  ".join(f"{k:>5}:{100 * v:5.1f}" for k, v in sorted(curve.items()))
            print(f"{attribute:<11} resnet18/w{args.width:<3} {points}", flush=True)
        print(f"shared renders: {total:.1f}s for {len(args.attributes)} attributes", flush=True)
    for idx, attribute in enumerate([] if args.shared else args.attributes):
        res = run_one(
            G,
            attribute,
            eval_images,
            eval_logits,
            arch="resnet18",
            width=args.width,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            psi=psi,
            seed=args.seed + idx,
            checkpoints=checkpoints,
            label_sharpness=args.label_sharpness,
        )
        print_row(attribute, "resnet18", args.width, res)

    ev_steps = args.evaluator_steps or args.steps
    ev_checkpoints = sorted({ev_steps // 4, ev_steps // 2, 3 * ev_steps // 4})
    for idx, attribute in enumerate(args.evaluator_attributes):
        res = run_one(
            G,
            attribute,
            eval_images,
            eval_logits,
            arch=args.evaluator_arch,
            width=args.evaluator_width,
            steps=ev_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            psi=psi,
            seed=args.seed + 100 + idx,
            checkpoints=ev_checkpoints,
            input_resolution=args.evaluator_resolution,
        )
        res_note = f"@{args.evaluator_resolution}" if args.evaluator_resolution else ""
        print_row(f"{attribute}*", f"{args.evaluator_arch}{res_note}", args.evaluator_width, res)
    print("* evaluator (different architecture and seed)")


if __name__ == "__main__":
    main()
