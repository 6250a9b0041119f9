"""Output of every command: strict JSON with ``--json``, else the command's human table."""

from __future__ import annotations

from typing import Any, Callable

from .._json import dumps


def emit(result: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    print(dumps(result) if as_json else human(result))
