"""The ``lorun`` command line: demo, restore, evaluate, info and train.

``lorun demo`` is the README's main job: it restores a shipped public-domain image from simulated 25 %
block-CS measurements with the shipped LoRun-9 and compares it with the initial estimate and the
phase-1 backbone alone (Block-9-share), then swaps in another ratio's adapter set in place. ``restore``
turns an image or a saved measurement into a restored image, ``evaluate`` scores a folder through
:mod:`lorun_peft.evaluation`, ``info`` prints a model's configuration, adapter sets and parameter
report, and ``train`` points at the example training scripts. Models come from the shipped assets
(:mod:`lorun_peft.pretrained`) or from ``--backbone``/``--adapters`` (folders or Hub ids). Bad
arguments and missing files print one ``error:`` line on stderr and exit with code 2. See docs/cli.md.

One module per subcommand (:mod:`.demo`, :mod:`.restore`, :mod:`.evaluate`, :mod:`.info`,
:mod:`.export`, :mod:`.train`), each adding its parser with ``add_command``; what they share (model
options and loading, devices, file helpers) is in :mod:`.common`. This module builds the parser and
runs a command, turning its errors into one line and an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lorun_peft.help import HelpFormatter

from . import demo, evaluate, export, info, restore, train
from .common import MEASUREMENT_SUFFIXES, SET_OPTIONS, _Parser
from .demo import run_demo
from .evaluate import run_evaluate
from .export import run_export
from .info import run_info
from .restore import run_restore
from .train import run_train

__all__ = [
    "DEBUG_ENV",
    "MEASUREMENT_SUFFIXES",
    "SET_OPTIONS",
    "build_parser",
    "main",
    "run_demo",
    "run_evaluate",
    "run_export",
    "run_info",
    "run_restore",
    "run_train",
]

#: The subcommand modules, in the order ``lorun --help`` lists them; each adds its parser with
#: ``add_command`` (so ``monkeypatch.setattr(lorun_peft.cli.info, "run_info", ...)`` reaches the parser).
COMMANDS = (demo, restore, evaluate, info, export, train)
#: Set to 1 to get tracebacks instead of one-line errors (as ``lorun --debug``).
DEBUG_ENV = "LORUN_DEBUG"
#: Errors that mean bad input (arguments, files, data): one line on stderr and exit status 2.
_INPUT_ERRORS = (ValueError, OSError, TypeError, LookupError)


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``lorun`` argument parser with its six subcommands."""
    parser = _Parser(
        prog="lorun",
        description="LoRun deep LoRA-unfolding networks for image restoration (CS, SR, CASSI).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of an error instead of one line (or set {DEBUG_ENV}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.add_command(commands)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _silence_stdout() -> None:
    """Point stdout at devnull so the interpreter's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout without a real descriptor
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lorun`` with ``argv`` (default ``sys.argv[1:]``); 0 on success, 2 on bad input.

    Errors are one line on stderr: exit 2 for bad input (arguments, files, data), 1 for anything else;
    ``--debug`` or ``LORUN_DEBUG=1`` shows the traceback instead.

    A closed output pipe ends the command quietly with 1 (Python's advice for ``EPIPE``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # keep stderr for errors: no "Loading weights" bars
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader left (``lorun info | head``): not a bad input, so no error line
        _silence_stdout()
        return 1
    except Exception as error:
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        if isinstance(error, _INPUT_ERRORS):
            print(f"lorun {args.command}: error: {_one_line(error)}", file=sys.stderr)
            return 2
        print(
            f"lorun {args.command}: internal error: {type(error).__name__}: {_one_line(error)} "
            f"(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        if bars:
            hf_logging.enable_progress_bar()
