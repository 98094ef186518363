"""Measure one shared classifier backbone with a head per attribute against the demo pack's classifiers.

The demo build trains one classifier per attribute and role (`models.demo_pack`): a ResNet-18 for
steering, a ResNet-34 for evaluation. One backbone with five 2-class heads would render and run each
training batch once for all five attributes, about a fifth of the work. This script trains such a
network with the build's settings of a role (architecture, seeds, psi range, graded or hard targets,
batch, learning rate and schedule), the loss the sum of the five cross-entropies, then cuts it into
five per-attribute classifiers (the shared weights with one head each, the pack format as it is) and
measures them as the build's report does:

- the accuracy on the report's 2,000 faces per attribute (psi = 1, the seeds of `_accuracy`);
- the gradient alignment on the report's 256 faces at psi 0.7 (the cosine of the classifier's
  instance-specific direction with the true logit's gradient: what IALS steers by).

Compare with the committed pack's `report.json` (`classifier_accuracy`, `gradient_alignment`).

Usage: python bench/shared_backbone.py --role steering [--width 16] [--steps 2500] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from models.demo_pack import DemoPackConfig, _ground_truth_gradients, _role_settings, _seeded, _stored, _world
from models.ials import instance_specific_direction
from models.networks.classifier import AttributeClassifier
from models.networks.procedural import ATTRIBUTES
from models.training import _lr_factor, classifier_accuracy, sample_training_ws


def train_shared(
    role: str, width: int, steps: int, config: DemoPackConfig
) -> tuple[AttributeClassifier, float]:
    """One network with `2 * len(ATTRIBUTES)` outputs, trained as the build trains the role's classifiers."""
    settings = _role_settings(role, config)
    G = _world(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["init_seed"])
        net = AttributeClassifier(
            settings["arch"],
            width=width,
            input_resolution=config.img_resolution,
            num_classes=2 * len(ATTRIBUTES),
        )
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    warmup = max(1, round(0.05 * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _lr_factor(i, steps, warmup))
    generator = _seeded(settings["seed"])
    sharpness = settings["label_sharpness"]
    net.train()
    start = time.perf_counter()
    for i in range(steps):
        with torch.no_grad():
            ws = sample_training_ws(
                G, n=config.batch_size, truncation_psi=settings["psi"], generator=generator, device="cpu"
            )
            if sharpness is not None:
                logits = G.attribute_logits(ws)
                p = {name: torch.sigmoid(sharpness * logits[name]).float() for name in ATTRIBUTES}
                targets = {name: torch.stack([1 - p[name], p[name]], dim=1) for name in ATTRIBUTES}
            else:
                labels = G.attribute_labels(ws)
                targets = {name: labels[name].long() for name in ATTRIBUTES}
            images = G.synthesis(ws, noise_mode="const")
        out = net.logits(images)  # [B, 2K]
        loss = torch.stack(
            [F.cross_entropy(out[:, 2 * k : 2 * k + 2], targets[name]) for k, name in enumerate(ATTRIBUTES)]
        ).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (i + 1) % max(1, steps // 10) == 0:
            print(
                f"step {i + 1}/{steps}: loss {float(loss.detach()):.4f}, {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    return net.eval(), time.perf_counter() - start


def heads(
    net: AttributeClassifier, role: str, width: int, config: DemoPackConfig
) -> dict[str, AttributeClassifier]:
    """The shared network as one 2-class classifier per attribute (the pack's per-attribute format), its
    weights rounded to the pack's storage dtype as the build rounds them."""
    arch = _role_settings(role, config)["arch"]
    state = net.state_dict()
    result = {}
    for k, name in enumerate(ATTRIBUTES):
        classifier = AttributeClassifier(arch, width=width, input_resolution=config.img_resolution)
        own = dict(state)
        own["net.fc.weight"] = state["net.fc.weight"][2 * k : 2 * k + 2]
        own["net.fc.bias"] = state["net.fc.bias"][2 * k : 2 * k + 2]
        classifier.load_state_dict(_stored(own, config, f"{role} {name!r}"))  # Rounded as the pack's.
        result[name] = classifier.eval().requires_grad_(False)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", choices=["steering", "evaluator"], required=True)
    parser.add_argument("--width", type=int, default=None, help="default: the build's width of the role")
    parser.add_argument("--steps", type=int, default=None, help="default: the build's steps of the role")
    parser.add_argument("--eval-faces", type=int, default=None, help="default: the report's (2,000)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = DemoPackConfig()
    width = (
        args.width
        if args.width is not None
        else (config.steering_width if args.role == "steering" else config.evaluator_width)
    )
    default_steps = config.steering_steps if args.role == "steering" else config.evaluator_steps
    if args.steps is not None:
        steps = args.steps
    else:
        steps = default_steps if isinstance(default_steps, int) else max(default_steps)
    if width < 1 or steps < 1:
        parser.error("--width and --steps must be >= 1")
    eval_faces = args.eval_faces if args.eval_faces is not None else config.eval_faces

    net, seconds = train_shared(args.role, width, steps, config)
    classifiers = heads(net, args.role, width, config)
    G = _world(config)
    accuracy = {
        name: classifier_accuracy(
            classifiers[name],
            G,
            name,
            n=eval_faces,
            truncation_psi=1.0,
            generator=_seeded(config.seed + 70 + i),
            device="cpu",
        )
        for i, name in enumerate(ATTRIBUTES)
    }
    ws = sample_training_ws(
        G, n=256, truncation_psi=config.truncation_psi, generator=_seeded(config.seed + 75), device="cpu"
    )
    truth = _ground_truth_gradients(G, ws)
    alignment = {}
    for name in ATTRIBUTES:
        cos = (instance_specific_direction(G, classifiers[name], ws, target=1) * truth[name]).sum(1)
        alignment[name] = {
            "mean_cos": round(float(cos.mean()), 4),
            "median_cos": round(float(cos.median()), 4),
        }
    print(
        json.dumps(
            {
                "role": args.role,
                "width": width,
                "steps": steps,
                "train_seconds": round(seconds, 1),
                "accuracy": accuracy,
                "gradient_alignment": alignment,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
