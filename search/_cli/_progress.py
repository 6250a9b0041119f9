"""Progress on stderr: one labelled tqdm bar per stage, fed by the pipeline's ``Ui`` calls."""

from __future__ import annotations

import sys

from .._pipeline import Ui


class StageBar:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.bar, self.stage = enabled, None, None

    def progress(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            # a log file (not a terminal) gets a line every few seconds, not one per update
            every = 0.1 if sys.stderr.isatty() else 5.0
            self.bar = tqdm(total=total or None, desc=stage, leave=False, file=sys.stderr,
                            dynamic_ncols=True, mininterval=every)
            self.stage = stage
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def status(self, stage: str, text: str) -> None:
        if self.enabled and self.bar is not None and stage == self.stage:
            self.bar.set_postfix_str(text)

    def say(self, line: str) -> None:
        if self.enabled:
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = self.stage = None

    def ui(self) -> Ui:
        return Ui(self.progress, self.status, self.say)


def with_bars(quiet: bool, fn, *args):
    """``fn(*args, ui)`` under labelled stage bars on stderr (none when ``quiet``: --json)."""
    bar = StageBar(not quiet)
    try:
        return fn(*args, bar.ui())
    finally:
        bar.close()
