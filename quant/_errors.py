"""Errors whose message is a one-line instruction for the user.

Every layer raises a subclass of ``UserError`` for bad input; the CLI prints ``str(err)`` on one
line and exits non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""


class UnknownTypeError(UserError, KeyError):
    def __init__(self, name: str, known: list[str] | None = None) -> None:
        hint = f"; known types: {', '.join(known)}" if known else ""
        super().__init__(f"unknown quant type '{name}'{hint}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TargetError(UserError):
    """A type that the chosen target project does not have, or an unknown target."""


class FallbackError(UserError):
    """llama-quantize would refuse this type for this tensor shape."""


class KernelMissingError(UserError, NotImplementedError):
    """The type exists but has no quantize/dequantize kernel here."""
