"""Options of a search run, defined once: ``SearchOptions`` fields carry their default, their
help text and their valid values; the CLI builds ``search``'s arguments from them, and a study
file (``--config studies/NAME.toml``) may set any of them (dashes or underscores; the command
line wins).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from quant import TARGETS, UserError

from .._optimize._objectives import OBJECTIVES

DEFAULT_TRIALS = 60


class OptionsError(UserError):
    pass


def _opt(default, help: str, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class SearchOptions:
    budget: str | None = _opt(None, "size budget(s): 4.1bpw, 900MiB, 14.2GiB, 15GB (GB = 10^9 "
                              "bytes); several comma-separated run one study each over one "
                              "measurement", required=True)
    model: str | None = _opt(None, "GGUF model (first file of a split) or a short name "
                             "(smollm2, gemma3-270m)", positional=True)
    calib: str | None = _opt(None, "calibration text", flag="-f", default_text="the bundled "
                             "calibration corpus")
    eval_file: str | None = _opt(None, "held-out text of the final comparison",
                                 default_text="the bundled evaluation corpus")
    target: str = _opt("mainline", "llama.cpp project the recipe is for", choices=TARGETS)
    types: tuple[str, ...] = _opt((), "comma-separated candidate types", list=True,
                                  default_text="every type the target can quantize here, "
                                  "but f32/f16/bf16")
    pins: tuple[str, ...] = _opt((), "fix the type of every tensor whose name matches REGEX "
                                 "(Python re.search, first matching pin wins; repeatable)",
                                 flag="--pin", metavar="REGEX=TYPE", append=True)
    ties: tuple[str, ...] = _opt((), "roles that must share one type per layer (repeatable); "
                                 "roles: see 'search inspect'", flag="--tie",
                                 metavar="ROLE,ROLE", append=True)
    objective: str = _opt("kld", "what a trial minimizes: mean KLD, KLD p99 or PPL",
                          choices=tuple(OBJECTIVES))
    trials: int | None = _opt(None, "finished trials per study, a resumed study's included "
                              f"(default {DEFAULT_TRIALS}, or none with --timeout)", type=int)
    timeout: float | None = _opt(None, "stop sampling after this many seconds", type=float)
    study: str | None = _opt(None, "study name; the same name resumes it",
                             default_text="MODEL-TARGET-BUDGET")
    storage: str | None = _opt(None, "sqlite:///PATH, journal:PATH (several processes) or "
                               "postgresql://... (several machines)",
                               default_text="sqlite under studies/NAME")
    jobs: int = _opt(1, "worker processes on this machine (needs journal or postgresql "
                     "storage)", type=int)
    seed: int = _opt(0, "seed of the sampler, proposals and chunk order", type=int)
    no_prune: bool = _opt(False, "evaluate every trial on all its chunks (no early stopping)",
                          flag_only=True)
    pareto: bool = _opt(False, "bytes and KLD as two objectives (no budget filling)", flag_only=True)
    ctx: int = _opt(512, "tokens per chunk", type=int)
    chunks: int = _opt(16, "calibration chunks per trial (evaluated one forward batch at a "
                        "time; early stopping decides between batches)", type=int)
    eval_chunks: int = _opt(16, "held-out chunks of the final comparison", type=int)
    select_chunks: int = _opt(16, "calibration chunks no trial saw (after the trials' "
                              "--chunks), on which the best 5 recipes are re-evaluated for the "
                              "final pick (0 skips it)", type=int)
    imatrix: str | None = _opt(None, "importance matrix (.dat or GGUF) to quantize with",
                               default_text="computed on the calibration text, as "
                               "llama-imatrix does")
    no_imatrix: bool = _opt(False, "quantize without an imatrix", flag_only=True)
    imatrix_chunks: int = _opt(32, "chunks of our imatrix pass", type=int)
    probe_bpw: float = _opt(4.5, "size of the calibration probes (each role at the uniform "
                            "level nearest it); one measurement serves every budget",
                            type=float)
    measure: bool = _opt(False, "measure every group's sensitivity first (slow; reused): the "
                         "MILP warm start then optimizes measured KLD", flag_only=True)
    measure_chunks: int = _opt(4, "chunks per sensitivity measurement (--measure)", type=int)
    measure_dir: str | None = _opt(None, "measurement folder (shared by studies and budgets)",
                                   default_text="studies/measure/MODEL-TARGET-KEY")
    studies_dir: str = _opt("studies", "home of study storage and outputs")
    write: str | None = _opt(None, "also write the best recipe's quantized GGUF here (several "
                             "budgets: one file each, the budget before the suffix)",
                             metavar="OUT.gguf")
    json: bool = _opt(False, "print the summary as JSON", flag_only=True)

    def study_name(self) -> str:
        if self.study:
            return self.study
        return f"{self.model_stem()}-{self.target}-{self.budget}".replace("/", "_")

    def model_stem(self) -> str:
        return Path(self.model).stem if self.model else "SmolLM2-135M-Instruct"

    def study_dir(self) -> Path:
        return Path(self.studies_dir) / self.study_name()

    def budgets(self) -> list[str]:
        return [b.strip() for b in str(self.budget).split(",") if b.strip()]


def option_fields() -> list:
    """The fields of ``SearchOptions`` with their metadata (the CLI's argument table)."""
    return list(fields(SearchOptions))


def default_of(name: str) -> Any:
    return next(f for f in fields(SearchOptions) if f.name == name).default


_TUPLES = {f.name for f in fields(SearchOptions) if f.metadata.get("list")
           or f.metadata.get("append")}


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
        out[k] = [v.strip() for v in value.split(",")] if k in _TUPLES and isinstance(value, str) \
            else value
    return out


def merge(cli: dict[str, Any], config: str | None = None, need_budget: bool = True
          ) -> SearchOptions:
    """Options from the command line (None or empty = not given) over the study file's."""
    values = _from_toml(config) if config else {}
    values.update({k: v for k, v in cli.items() if v is not None and v != [] and v != ()})
    if need_budget and not values.get("budget"):
        raise OptionsError("no budget: give --budget (e.g. 4.1bpw) or 'budget' in the study file")
    if values.get("trials") is None and values.get("timeout") is None:
        values["trials"] = DEFAULT_TRIALS
    for k in _TUPLES & set(values):
        values[k] = tuple(values[k])
    return SearchOptions(**values)


def per_budget(opts: SearchOptions) -> list[SearchOptions]:
    """One study's options per budget of a comma-separated ``--budget`` (a given --study name
    gains the budget as suffix when there are several)."""
    budgets = opts.budgets() if opts.budget else []
    if len(budgets) <= 1:
        return [replace(opts, budget=b) for b in budgets]
    return [replace(opts, budget=b, study=f"{opts.study}-{b}" if opts.study else None,
                    write=_suffixed(opts.write, b)) for b in budgets]


def _suffixed(path: str | None, budget: str) -> str | None:
    if path is None:
        return None
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{budget}{p.suffix}"))
