"""Options of a search run: command line over a study file (``--config studies/NAME.toml``).

Every long option can be a key of the TOML file (dashes or underscores); the command line wins.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from quant import UserError


class OptionsError(UserError):
    pass


@dataclass
class SearchOptions:
    budget: str
    model: str | None = None
    calib: str | None = None  # -f: calibration text (default: the bundled corpus, calib part)
    eval_file: str | None = None  # held-out text (default: the bundled corpus, eval part)
    target: str = "mainline"
    types: list[str] | None = None
    pins: list[str] = field(default_factory=list)
    ties: list[str] = field(default_factory=list)
    objective: str = "kld"
    trials: int | None = None
    timeout: float | None = None
    study: str | None = None
    storage: str | None = None
    jobs: int = 1
    seed: int = 0
    pareto: bool = False
    ctx: int = 512
    chunks: int = 8  # calibration chunks per trial
    eval_chunks: int = 16  # held-out chunks for the final comparison
    select_chunks: int = 16  # calibration chunks on which the best few trials are re-evaluated
    imatrix: str | None = None  # default: our own llama-imatrix pass over the calibration text
    no_imatrix: bool = False
    imatrix_chunks: int = 32
    measure: bool = False  # measure each role x layer group's delta KLD per type (MILP warm start)
    measure_chunks: int = 4
    studies_dir: str = "studies"
    json: bool = False

    def study_name(self) -> str:
        if self.study:
            return self.study
        stem = Path(self.model).stem if self.model else "SmolLM2-135M-Instruct"
        return f"{stem}-{self.target}-{self.budget}".replace("/", "_")

    def study_dir(self) -> Path:
        return Path(self.studies_dir) / self.study_name()

    def cache_dir(self) -> Path:
        """Quantized tensors, base statistics, scores and probes, shared by studies."""
        return Path(self.studies_dir) / ".cache"


_LISTS = {"types", "pins", "ties"}


def _from_toml(path: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise OptionsError(f"{path}: no such study file") from None
    except tomllib.TOMLDecodeError as e:
        raise OptionsError(f"{path}: not valid TOML ({e})") from None
    known = {f.name for f in fields(SearchOptions)}
    out = {}
    for key, value in data.items():
        k = key.replace("-", "_")
        if k not in known:
            raise OptionsError(f"{path}: unknown option '{key}' (known: {', '.join(sorted(known))})")
        out[k] = [v.strip() for v in value.split(",")] if k in _LISTS and isinstance(value, str) \
            else value
    return out


def merge(cli: dict[str, Any], config: str | None) -> SearchOptions:
    """Options from the command line (None = not given) over the study file's."""
    values = _from_toml(config) if config else {}
    values.update({k: v for k, v in cli.items() if v is not None and v != []})
    if "budget" not in values:
        raise OptionsError("no budget: give --budget (e.g. 4.1bpw) or 'budget' in the study file")
    if values.get("trials") is None and values.get("timeout") is None:
        values["trials"] = 60
    return SearchOptions(**values)
