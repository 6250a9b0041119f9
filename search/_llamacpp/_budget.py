"""Size budgets: parsing ``4.1bpw`` / ``14.2GiB`` / ``900MiB`` / ``15GB`` and what a model can reach.

Sizes are llama-quantize's: bytes = sum of every tensor's data bytes (norms and row meta
included), BPW = 8 * bytes / total elements of all tensors. Pure arithmetic, no optuna.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quant import UserError

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


class BudgetError(UserError):
    pass


@dataclass(frozen=True)
class Budget:
    """A budget as the user wrote it: ``value`` in bits per weight or in bytes."""

    value: float
    unit: str  # "bpw" or "bytes"
    text: str

    def nbytes(self, n_elements: int) -> int:
        """The largest byte count within the budget for a model of ``n_elements`` weights."""
        if self.unit == "bpw":
            return int(self.value * n_elements / 8)
        return int(self.value)


def parse_budget(text: str) -> Budget:
    m = _RE.match(str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or (unit not in _UNITS and unit != "bpw") or not unit:
        raise BudgetError(f"malformed budget '{text}': write e.g. 4.1bpw, 900MiB, 14.2GiB or 15GB")
    value = float(m.group(1))
    if value <= 0:
        raise BudgetError(f"budget '{text}' must be positive")
    if unit == "bpw":
        return Budget(value, "bpw", text)
    return Budget(value * _UNITS[unit], "bytes", text)


def parse_budgets(text: str) -> list[Budget]:
    """``3.5bpw,4.1bpw,4.5bpw``: one study per budget, in the order given, each once."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise BudgetError("no budget: give --budget, e.g. 4.1bpw or 3.5bpw,4.5bpw")
    out = []
    for b in map(parse_budget, items):
        if b not in out:
            out.append(b)
    return out


def bpw(nbytes: int, n_elements: int) -> float:
    return 8.0 * nbytes / n_elements


def human_size(nbytes: int, n_elements: int) -> str:
    """``98.87 MiB (0.097 GiB, 6.1655 BPW)``: MiB as llama-quantize prints it."""
    return (f"{nbytes / 2**20:.2f} MiB ({nbytes / 2**30:.3f} GiB, "
            f"{bpw(nbytes, n_elements):.4f} BPW)")


def check_reachable(budget: Budget, lo: int, hi: int, n_elements: int, target: str) -> int:
    """The budget in bytes, or a BudgetError giving the reachable range."""
    want = budget.nbytes(n_elements)
    if lo <= want <= hi:
        return want
    side = "below the smallest" if want < lo else "above the largest"
    raise BudgetError(
        f"budget {budget.text} ({human_size(want, n_elements)}) is {side} {target} recipe this "
        f"model can reach: smallest {human_size(lo, n_elements)}, largest "
        f"{human_size(hi, n_elements)}; choose a budget in that range or change --types")
