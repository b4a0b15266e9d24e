"""``python -m onnxopt`` / ``onnxopt``: the command-line entry point.

Every subcommand lives in its own module under ``onnxopt.cli`` with
``add_parser(subparsers)`` and ``run(args) -> int``. Errors the user can fix
print one line and exit 2 (checks that fail exit 1); ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from onnxopt import __version__
from onnxopt.errors import OnnxoptError

#: subcommand name -> module under onnxopt.cli (imported only when used)
COMMANDS: dict[str, str] = {
    "inspect": "onnxopt.cli.inspect_cmd",
    "optimize": "onnxopt.cli.optimize_cmd",
    "check": "onnxopt.cli.check_cmd",
    "bench": "onnxopt.cli.bench_cmd",
    "eval": "onnxopt.cli.eval_cmd",
    "passes": "onnxopt.cli.passes_cmd",
    "finetune": "onnxopt.cli.finetune_cmd",
    "prune": "onnxopt.cli.prune_cmd",
    "quantize": "onnxopt.cli.quantize_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxopt",
        description="Optimize ONNX CNN graphs: cleanup, INT8 quantization, structured pruning, distillation. "
                    "Run 'onnxopt COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"onnxopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # command not built yet
            raise
        cmd = mod.add_parser(sub)
        cmd.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show tracebacks and debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")
    if not debug:
        logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)
        try:
            import onnx_graphsurgeon as gs

            gs.G_LOGGER.severity = gs.G_LOGGER.ERROR
        except Exception:  # pragma: no cover
            pass
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OnnxoptError as exc:
        if debug:
            raise
        print(f"onnxopt {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("onnxopt: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            raise
        print(f"onnxopt {args.command}: error: out of memory", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        print(f"onnxopt {args.command}: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
