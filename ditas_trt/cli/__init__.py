"""`ditas-trt` command line: one module per subcommand; each keeps its heavy imports (ModelOpt, TensorRT) inside functions."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from ditas_trt.errors import DitasError

# name -> module in ditas_trt.cli; each module has a docstring (the help), add_arguments(parser) and run(args).
SUBCOMMANDS = {
    "info": "info",
    "sample": "sample",
    "quantize": "quantize",
    "export": "export",
    "build": "build",
    "eval": "evaluate",
    "pipeline": "pipeline",
    "triton-repo": "triton_repo",
    "serve": "serve",
    "bench": "bench",
    "fid": "fid",
}

PROG = "ditas-trt"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message):
        raise DitasError(message)


class _MissingCommand:
    """Stands in for a subcommand whose module failed to import; the other subcommands keep working."""

    def __init__(self, name: str, error: Exception):
        self.__doc__ = f"(unavailable: {error})"
        self._message = f"subcommand '{name}' is unavailable: {error}"

    def add_arguments(self, parser):
        parser.add_argument("rest", nargs=argparse.REMAINDER)

    def run(self, args):
        raise DitasError(self._message)


def _load(name: str, module_name: str):
    try:
        return importlib.import_module(f"ditas_trt.cli.{module_name}")
    except ImportError as exc:
        return _MissingCommand(name, exc)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    from ditas_trt import __version__

    parser = _Parser(prog=PROG, description="DiTAS W4A8 quantization of Diffusion Transformers, deployed with TensorRT.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        module = modules[name] = _load(name, module_name)
        doc = (module.__doc__ or "").strip()
        sp = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sp)
    return parser, modules


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser, modules = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return int(modules[args.command].run(args) or 0)
    except DitasError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the user named (or the disk) failed us: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
