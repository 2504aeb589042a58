"""The `ainode` console command.

Each area of the node registers its own subcommands from a ``commands`` module with a
``register(subparsers)`` function; benchmarks live in ``node.bench.<name>`` modules with
``add_arguments(parser)`` and ``run(args, settings) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from node import __version__
from node.config import Settings, load_settings

COMMAND_MODULES = (
    "node.stack.commands",  # up, down, status, send, worker, db, demo
    "node.synth.commands",  # synth
    "node.dicom.commands",  # inspect
    "node.pipeline_commands",  # analyze
    "node.training.commands",  # train
    "node.eval.commands",  # eval
    "node.lesions.commands",  # tracks, similar
)


# Commands that start or stop the stack themselves; every other command is handed the URLs
# of the running stack (where the user configured none).
STACK_OWNERS = frozenset({"up", "down", "demo"})


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _bench_modules() -> list[str]:
    import node.bench

    return sorted(m.name for m in pkgutil.iter_modules(node.bench.__path__) if not m.name.startswith("_"))


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks that print ratios against a baseline measured in the same run")
    inner = bench.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name in _bench_modules():
        module = importlib.import_module(f"node.bench.{name}")
        sub = inner.add_parser(name.replace("_", "-"), help=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ainode", description="PACS AI node")
    parser.add_argument("--version", action="version", version=f"ainode {__version__}")
    parser.add_argument("--config", default=None, help="TOML settings file (default: $AINODE_CONFIG or ./ainode.toml)")
    parser.add_argument("--data-dir", default=None, help="state directory (default: $AINODE_DATA_DIR or .ainode)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("pgserver", "pynetdicom", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from pathlib import Path

        settings: Settings = load_settings(Path(args.config) if args.config else None, data_dir=args.data_dir)
        if args.command not in STACK_OWNERS:
            from node.stack.services import effective_settings

            settings = effective_settings(settings)
        return int(args.func(args, settings) or 0)
    except CommandError as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
