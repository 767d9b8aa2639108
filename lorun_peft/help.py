"""The one ``--help`` formatter of the ``lorun`` command and the example scripts.

``lorun`` and its subcommands, ``examples/train_<task>.py`` (:mod:`lorun_peft.recipes.arguments`) and
``examples/evaluate.py`` (:mod:`lorun_peft.evaluation.command`) all format their help with
:class:`HelpFormatter`, so every option shows its default the same way.
"""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows the default of every option that has a meaningful one; keeps a laid-out description as is.

    A description with line breaks (an example script's module docstring, with its command lines) is
    printed as written; a one-line description (``lorun``'s subcommands) is wrapped to the terminal like
    argparse's default formatter does. A switch's default is left out (``--no-images ... (default: True)``
    would say the opposite of its help), and so is a positional's.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if (
            not switch
            and default is not None
            and default is not False
            and default != argparse.SUPPRESS
            and "%(default)" not in text
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text
