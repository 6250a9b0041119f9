"""Stage 0: every check that can fail on bad input, before any work or any study is touched.

    prepare(opts) -> Spec            the model, types, ties, measurement identity, one Plan per budget
    Spec.measure_dir                 where the measurement lives (shared by budgets and studies)
    Plan                             one study: its options, space, budget in bytes and the
                                     settings stored with the study (a resumed study must match)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from quant import UserError, searchable_types, type_in_target

from objectives import GGUFModel, bos_id, corpus_tokens, make_chunks, read_corpus, tool_version

from .._llamacpp import check_reachable, file_sha256, human_size, parse_budget
from .._optimize import DEFAULT_TIES, OBJECTIVES, Space, build_space, check_ties
from .._study import check_url, default_url
from ._model import load_model
from ._options import SearchOptions, per_budget

DEFAULT_EXCLUDE = ("f32", "f16", "bf16")


@dataclass(frozen=True)
class MeasureSettings:
    """What a measurement is a function of; its key names the folder."""

    model: str  # sha256 of headers and tensor heads (GGUFModel.identity)
    target: str
    calib_sha256: str
    ctx: int
    imatrix: str  # "own:N" (our pass over N chunks), "file:SHA256" or "none"
    version: str

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ProbeSettings:
    """The calibration probes' settings, inside a measurement (one file per key)."""

    types: tuple[str, ...]
    chunks: int
    probe_bpw: float

    def key(self) -> str:
        return hashlib.sha256(json.dumps([list(self.types), self.chunks, self.probe_bpw])
                              .encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Plan:
    """One study: one budget of the run."""

    opts: SearchOptions
    space: Space
    budget: int
    attrs: dict  # stored as the study's ``spec``; a resumed study must have the same


@dataclass(frozen=True)
class Spec:
    opts: SearchOptions
    model: GGUFModel
    types: tuple[str, ...]
    ties: tuple[tuple[str, ...], ...]
    settings: MeasureSettings
    probe: ProbeSettings
    measure_dir: Path
    plans: tuple[Plan, ...]

    @property
    def calib_chunks(self) -> int:
        """Chunks of the calibration session: the trials', then the final pick's (others)."""
        return self.opts.chunks + self.opts.select_chunks


def default_types(target: str) -> list[str]:
    return [t for t in searchable_types(target) if t not in DEFAULT_EXCLUDE]


def _types(opts: SearchOptions) -> tuple[str, ...]:
    if not opts.types:
        return tuple(default_types(opts.target))
    names = [type_in_target(t, opts.target).name for t in opts.types]
    missing = [t for t in names if t not in searchable_types(opts.target)]
    if missing:
        raise UserError(f"no {opts.target} kernel for {', '.join(missing)} here: the search can "
                        f"evaluate {', '.join(searchable_types(opts.target))}")
    return tuple(dict.fromkeys(names))


def _check_storage(opts: SearchOptions) -> None:
    if opts.storage:
        check_url(opts.storage)
    url = opts.storage or default_url(opts.study_dir())
    if opts.jobs > 1 and url.startswith("sqlite"):
        raise UserError(f"--jobs {opts.jobs} runs several processes on one study, which SQLite "
                        f"cannot serve safely: add --storage journal:{opts.study_dir()}/study.log "
                        "(or a postgresql:// URL)")


def _check_options(opts: SearchOptions) -> None:
    if opts.jobs < 1:
        raise UserError(f"--jobs {opts.jobs}: give at least 1")
    if opts.objective not in OBJECTIVES:
        raise UserError(f"unknown --objective '{opts.objective}': use {', '.join(OBJECTIVES)}")
    for name in ("chunks", "eval_chunks", "imatrix_chunks"):
        if getattr(opts, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(opts, name)}: give at least 1")
    if opts.imatrix and opts.no_imatrix:
        raise UserError("--imatrix and --no-imatrix exclude each other: give one")


def _check_corpora(model: GGUFModel, opts: SearchOptions) -> str:
    """Both texts exist and hold at least one chunk; the calibration text's sha256."""
    texts = {}
    for kind, path in (("calib", opts.calib), ("eval", opts.eval_file)):
        texts[kind] = read_corpus(path, kind)
        make_chunks(corpus_tokens(model, texts[kind]), opts.ctx, 1, bos_id(model))
    return hashlib.sha256(texts["calib"].encode()).hexdigest()


def _imatrix_source(opts: SearchOptions) -> str:
    if opts.no_imatrix:
        return "none"
    if opts.imatrix:
        from objectives import read_imatrix

        read_imatrix(opts.imatrix)  # a one-line error for a missing or broken file
        return f"file:{file_sha256(opts.imatrix)}"
    return f"own:{opts.imatrix_chunks}"


def _plan(opts: SearchOptions, model: GGUFModel, types, ties, settings: MeasureSettings,
          probe: ProbeSettings) -> Plan:
    space = build_space(model, opts.target, list(types), list(opts.pins), ties)
    lo, hi = space.extremes()
    budget = check_reachable(parse_budget(opts.budget), lo, hi, model.n_elements, opts.target)
    attrs = {"model": settings.model, "target": opts.target, "budget_bytes": budget,
             "types": list(types), "pins": list(opts.pins), "ties": [list(t) for t in ties],
             "objective": opts.objective, "pareto": opts.pareto, "ctx": opts.ctx,
             "chunks": opts.chunks, "measurement": settings.key(), "probes": probe.key()}
    return Plan(opts, space, budget, attrs)


def prepare(opts: SearchOptions, model: GGUFModel | None = None) -> Spec:
    """Everything that can fail on bad input, for every budget, before any long work."""
    _check_options(opts)
    per = per_budget(opts)
    for o in per:
        _check_storage(o)
    model = model or load_model(opts.model)
    types = _types(opts)
    user_ties = tuple(tuple(r.strip() for r in t.split(",")) for t in opts.ties)
    check_ties(model.quantizable(opts.target), user_ties)
    ties = DEFAULT_TIES[opts.target] + user_ties
    settings = MeasureSettings(model.identity()["sha256_header_and_heads"], opts.target,
                               _check_corpora(model, opts), opts.ctx, _imatrix_source(opts),
                               tool_version())
    probe = ProbeSettings(types, opts.chunks, float(opts.probe_bpw))
    plans = tuple(_plan(o, model, types, ties, settings, probe) for o in per)
    folder = Path(opts.measure_dir) if opts.measure_dir else (
        Path(opts.studies_dir) / "measure" / f"{opts.model_stem()}-{opts.target}-{settings.key()}")
    return Spec(opts, model, types, ties, settings, probe, folder, plans)


def header(spec: Spec) -> list[str]:
    """What the run is about, before any work: model, target, budgets, folders."""
    m, h = spec.model, spec.model.hparams()
    lines = [f"model    {m.paths[0]} ({h.arch}, {h.n_layer} layers, {m.n_elements:,} weights, "
             f"{human_size(m.nbytes, m.n_elements)})",
             f"target   {spec.opts.target}: {len(spec.types)} candidate types "
             f"({', '.join(spec.types)})"]
    for p in spec.plans:
        lines.append(f"budget   {p.opts.budget} = {p.budget:,} bytes = "
                     f"{human_size(p.budget, m.n_elements)} -> study {p.opts.study_dir()}")
    lines.append(f"measure  {spec.measure_dir}")
    return lines
