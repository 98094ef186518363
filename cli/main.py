"""`ials`: the project's command line. Each subcommand lives in its own module and imports torch lazily."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cli.common import CliError, fail

# Subcommand name -> module holding `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("cli.serve", "Start the whole service: Redis (embedded unless configured), workers, the API."),
    "render": ("cli.render", "Render latents or seeds to PNG (or raw .npy) with a model pack."),
    "edit": ("cli.edit", "Run an IALS edit locally and write frames, latents and scores."),
    "convert": ("cli.convert", "Convert NVIDIA, rosinality or official IALS checkpoints into a model pack."),
    "invert": ("cli.invert", "Align the largest face of a photo and invert it into the pack's w+."),
    "worker": ("cli.worker", "Run edit jobs from Redis with the model pack loaded once (see `ials serve`)."),
    "build-demo-pack": (
        "cli.build_demo_pack",
        "Rebuild the embedded demo pack from nothing (training and measurement: about 1.5 h on 2 cores).",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ials",
        description="Disentangled face attribute editing with IALS (Instance-Aware Latent-Space Search).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ials` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args))
    except CliError as exc:
        return fail(str(exc))
    except OSError as exc:  # Unwritable output, a folder where a file should go, a full disk, ...
        return fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        return fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
