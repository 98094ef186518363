"""`ials build-demo-pack`: rebuild the embedded demo pack from nothing, deterministically, with progress."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from cli.common import CliError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="pack folder to create (the committed: packs/demo)")
    parser.add_argument("--seed", type=_positive_int, default=0, help="seed of everything (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pack at --out")
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="worker processes for the training and the flip/DT measurements (default or 0: one per "
        "CPU core); every job runs with one torch thread, so the pack does not depend on it; 1 runs "
        "the jobs in this process",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch CPU threads of the measurements outside the jobs (accuracy, statistics, sheet); "
        "default: torch's",
    )
    parser.add_argument(
        "--measure-only",
        action="store_true",
        help="re-measure the pack at --out (report.json, sheet.png) without rebuilding it",
    )
    parser.add_argument(
        "--dt-primals",
        nargs="+",
        default=None,
        metavar="ATTR",
        help="with --measure-only: measure the DT comparison for these primal attributes only",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one DemoPackConfig field (JSON value), e.g. --set steering_steps=200 --set dt_faces=0",
    )


def _overrides(pairs: list[str]) -> dict[str, Any]:
    from models.demo_pack import DemoPackConfig

    fields = {f.name: f for f in dataclasses.fields(DemoPackConfig)}
    hints = typing.get_type_hints(DemoPackConfig)
    result: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in fields:
            raise CliError(f"--set {pair!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
        try:
            value = json.loads(text)
        except ValueError:
            if hints[name] is not str:
                raise CliError(f"--set {pair!r}: the value must be JSON (a number, a list, ...)") from None
            value = text  # A bare word for a text field: --set weights_dtype=float32.
        result[name] = tuple(value) if isinstance(value, list) else value
    return result


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from models.demo_pack import DemoPackConfig, build_demo_pack, measure_demo_pack
    from models.pack import PackError, load_pack

    if args.threads:
        torch.set_num_threads(args.threads)
    jobs = args.jobs if args.jobs else None
    out = Path(args.out)
    overrides = _overrides(args.set)
    if args.measure_only:
        try:
            recorded = load_pack(out, "cpu").manifest["extra"]["build"]["config"]
        except PackError as err:
            raise CliError(str(err)) from None
        except (KeyError, TypeError):
            raise CliError(f"{out} was not built by build-demo-pack (no extra.build.config)") from None
        base: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value for key, value in recorded.items()
        }
        base.update(overrides)
    else:
        base = {"seed": args.seed, **overrides}
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
            raise CliError(f"{out} exists and is not an empty folder; pass --overwrite to replace it")
    try:
        config = DemoPackConfig(**base)
    except (TypeError, ValueError) as err:
        raise CliError(str(err)) from None

    bars: dict[str, Any] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=total or None, desc=stage, unit="it", file=sys.stderr)
        bar.update(done - bar.n if total else 1)

    if args.measure_only:
        report = measure_demo_pack(
            out, config, dt_primals=args.dt_primals, jobs=jobs, on_progress=on_progress
        )
    else:
        report = build_demo_pack(out, config, overwrite=args.overwrite, jobs=jobs, on_progress=on_progress)
    for bar in bars.values():
        bar.close()
    accuracy = report["classifier_accuracy"]
    build = report.get("build") or {}
    seconds = build.get("seconds", {})
    built_in = seconds.get("wall", seconds.get("total"))
    suffix = (f", built in {built_in:.0f} s" if built_in else "")
    print(f"pack: {out} ({report['pack_mb']} MB of weights){suffix}")
    print(f"  measured in {sum(report['measure_seconds'].values()):.0f} s")
    for name, roles in accuracy.items():
        print(f"  {name:<11} steering {roles['steering']:.3f}  evaluator {roles['evaluator']:.3f}")
    print(f"  default step {report['defaults']['step']}")
    print(f"  report: {out / 'report.json'}, sheet: {out / 'sheet.png'}")
    return 0
