"""What the stages tell the user, injected by the caller (the CLI shows bars and lines; tests
and ``--json`` runs pass the silent default).

    ui.progress(stage, done, total)   a labelled bar per stage (a new label starts a new bar)
    ui.status(stage, text)            the figure a bar shows beside its count
    ui.say(line)                      one line of text (the header, notes)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _nothing(*_a) -> None:
    return None


@dataclass(frozen=True)
class Ui:
    progress: Callable[[str, int, int], None] = _nothing
    status: Callable[[str, str], None] = _nothing
    say: Callable[[str], None] = _nothing

    def staged(self, stage: str) -> Callable[[str, int, int], None]:
        """A progress callback that labels every call with ``stage``."""
        return lambda _s, done, total: self.progress(stage, done, total)


SILENT = Ui()
