"""The one ``--help`` formatter of the ``lorun`` command and the example scripts."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows the default of every option that has a meaningful one.

    A switch's default is left out (``--no-images ... (default: True)`` would say the opposite of its help).
    """

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
