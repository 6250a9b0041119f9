"""Progress on stderr: one tqdm bar per stage, fed by ``progress(stage, done, total)`` calls."""

from __future__ import annotations


class StageBar:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.bar, self.stage = enabled, None, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.bar, self.stage = tqdm(total=total, desc=stage, leave=False), stage
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = self.stage = None
