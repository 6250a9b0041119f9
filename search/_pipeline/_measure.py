"""Stage 1, the measurement: everything a study needs that does not depend on its budget,
in one versioned folder that any number of studies and budgets read.

    manifest.json      format gguf-recipe-measure/1: settings (model, target, corpus, ctx,
                       imatrix source, tool version) and the parts done, each with its files'
                       sha256 (no times: an interrupted and resumed run writes the same manifest)
    imatrix.gguf/.dat  the imatrix in both formats (ik reads only .dat); absent with --no-imatrix
    similarity.json    layer similarity (ik's --layer-similarity) of the calibration pass
    samples.npz        sampled matmul inputs of that pass (tensor importance, the head's weights)
    base/              base-model statistics per corpus and chunk count (objectives.base_stats)
    quant/             every (tensor, type) quantized once (objectives.QuantCache)
    quant-index.json   per tensor, per written type: bytes, output error energy, cosine
                       importance; grows with the types asked for
    probes/KEY.json    calibration probes per (types, chunks, probe size): KLDs, role scales
    timings.json       seconds each stage took (not part of the identity)

Each part is written when complete (and the quantization index entry by entry, the probes probe
by probe), so a killed ``measure`` resumes where it stopped. A folder made with other settings
is refused with a one-line error, never mixed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quant import UserError

from objectives import (EvalSession, GGUFModel, QuantCache, bos_id, collect, corpus_tokens,
                        make_chunks, read_corpus, read_imatrix, tensor_importance, write_dat,
                        write_gguf)

from .._json import write_json
from .._llamacpp import tensor_options
from .._optimize import (_surrogate as S, build_space, group_roles, probe_level, role_scales,
                         to_plan, unit_table, error_loss)
from .._study import plan_sha
from ._prepare import ProbeSettings, Spec
from ._ui import SILENT, Ui

FORMAT = "gguf-recipe-measure/1"
SAMPLE_TOKENS = 256


class MeasurementError(UserError):
    pass


@dataclass(frozen=True)
class Probes:
    settings: ProbeSettings
    role_scales: dict[str, float]  # role -> KLD per unit of error energy
    base_kld: float  # KLD of the least-damage recipe
    results: tuple[tuple[str, str, float], ...]  # (probe name, plan sha, kld)


@dataclass(frozen=True)
class Measurement:
    folder: Path
    settings: dict
    imatrix_path: Path | None
    similarity: dict[str, dict[int, float]]
    index: dict[str, dict[str, dict]]  # tensor -> written type -> {bytes, error, cos, rel_err}
    probes: Probes

    def imatrix(self, model: GGUFModel) -> dict[str, np.ndarray] | None:
        """The imatrix as llama-quantize hands it to the quantizers."""
        return None if self.imatrix_path is None else \
            read_imatrix(self.imatrix_path).for_quantizer(model)

    def errors(self) -> dict[str, dict[str, float]]:
        return {n: {t: e["error"] for t, e in row.items()} for n, row in self.index.items()}

    def session(self, model: GGUFModel, text: str, ctx: int, n_chunks: int, target: str,
                ui: Ui = SILENT) -> EvalSession:
        """An evaluation session over ``text`` (the held-out text) with this measurement's
        quantized tensors and base statistics."""
        return EvalSession(model, corpus_tokens(model, text), ctx, n_chunks, target,
                           self.imatrix(model), self.folder,
                           progress=ui.staged("held-out base statistics"))


def evaluate_staged(session, plan: dict[str, str], chunks: list[int], tick=None) -> dict:
    """``session``'s figures of ``plan`` on ``chunks``, a batch of chunks at a time;
    ``tick(n)`` after each batch (a bar that moves every few seconds). The plan's weights are
    released at the end: another session's plan must not find them still resident."""
    stats, step = [], max(1, getattr(session, "batch", 4))
    try:
        for i in range(0, len(chunks), step):
            stats += session.run(plan, chunks[i:i + step])
            if tick:
                tick(len(stats))
    finally:
        session.release()
    return session.summarize(stats)


# ---------------------------------------------------------------- the manifest


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder: Path) -> dict | None:
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise MeasurementError(f"{path}: not valid JSON: delete the folder to measure again") \
            from None
    if data.get("format") != FORMAT:
        raise MeasurementError(f"{path}: format {data.get('format')!r}, expected '{FORMAT}': "
                               "delete the folder to measure again")
    return data


def check_measurement(spec: Spec) -> dict | None:
    """The folder's manifest (None when there is none yet); refused, before any output or
    work, when it was made with other settings."""
    folder, settings = spec.measure_dir, dict(spec.settings.__dict__)
    data = _manifest(folder)
    if data is None:
        return None
    old = data.get("settings", {})
    diff = [k for k in settings if old.get(k) != settings[k]]
    if diff:
        k = diff[0]
        raise MeasurementError(
            f"measurement {folder} was made with another {_WHAT.get(k, k)} ({old.get(k)!r}, "
            f"this run: {settings[k]!r}): give another --measure-dir or the same settings")
    return data


def done_stages(spec: Spec) -> frozenset[str]:
    """The stages of the plan's estimate this measurement folder already holds (a second
    budget, or a resumed run, skips them)."""
    data = _manifest(spec.measure_dir)
    if data is None or data.get("settings") != dict(spec.settings.__dict__):
        return frozenset()
    parts, done = data["parts"], set()
    if "scores" in parts:
        done.add("imatrix pass")
    if "quant" in parts:  # the calibration base statistics come before it
        done.add("base statistics")
        if set(spec.types) <= set(parts["quant"].get("types", [])):
            done.add("quantization cache")
    if f"probes:{spec.probe.key()}" in parts:
        done.add("calibration probes")
    return frozenset(done)


def _open(spec: Spec) -> dict:
    """The folder's manifest, created for these settings when absent."""
    data = check_measurement(spec)
    if data is None:
        data = {"format": FORMAT, "settings": dict(spec.settings.__dict__),
                "model": _model_info(spec.model), "parts": {}}
        write_json(spec.measure_dir / "manifest.json", data)
    return data


_WHAT = {"model": "model", "calib_sha256": "calibration text", "version": "tool version",
         "imatrix": "imatrix", "ctx": "context size", "target": "target"}


def _model_info(model: GGUFModel) -> dict:
    ident = model.identity()
    return {k: ident[k] for k in ("name", "arch", "file", "n_elements", "bytes")}


def _record(spec: Spec, data: dict, part: str, files: list[str], **extra) -> dict:
    data = {**data, "parts": {**data["parts"], part: {
        "files": {f: _sha(spec.measure_dir / f) for f in files}, **extra}}}
    write_json(spec.measure_dir / "manifest.json", data)
    return data


def _timed(spec: Spec, stage: str, seconds: float) -> None:
    path = spec.measure_dir / "timings.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    known[stage] = round(known.get(stage, 0.0) + seconds, 2)
    write_json(path, known)


# ---------------------------------------------------------------- part 1: the calibration pass


def _scores(spec: Spec, data: dict, ui: Ui) -> dict:
    """Imatrix (ours, or the given file in both formats), layer similarity and input samples
    from one streamed pass over ``--imatrix-chunks`` calibration chunks."""
    if "scores" in data["parts"]:
        return data
    t0, opts, model, folder = time.perf_counter(), spec.opts, spec.model, spec.measure_dir
    tokens = corpus_tokens(model, read_corpus(opts.calib, "calib"))
    chunks = make_chunks(tokens, opts.ctx, opts.imatrix_chunks, bos_id(model))
    col = collect(model, chunks, sample_tokens=SAMPLE_TOKENS, progress=ui.staged("imatrix pass"))
    files = ["similarity.json", "samples.npz"]
    if not opts.no_imatrix:
        im = read_imatrix(opts.imatrix) if opts.imatrix else col.imatrix
        if not opts.imatrix:
            im.datasets = [Path(opts.calib).name if opts.calib else "calib.txt"]
        write_gguf(im, _tmp(folder / "imatrix.gguf")).replace(folder / "imatrix.gguf")
        write_dat(im, _tmp(folder / "imatrix.dat")).replace(folder / "imatrix.dat")
        files += ["imatrix.gguf", "imatrix.dat"]
    write_json(folder / "similarity.json",
               {k: {str(L): c for L, c in v.items()} for k, v in col.similarity.items()})
    np.savez(_tmp(folder / "samples.npz"), **col.samples)
    Path(str(_tmp(folder / "samples.npz"))).replace(folder / "samples.npz")
    _timed(spec, "imatrix pass", time.perf_counter() - t0)
    return _record(spec, data, "scores", files, chunks=len(chunks))


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".tmp.{path.name}")


# ---------------------------------------------------------------- part 2: the quantization cache


def _index_rows(path: Path) -> dict[str, dict[str, dict]]:
    """Entries of the index journal (a truncated last line, from a kill, is dropped)."""
    out: dict[str, dict[str, dict]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.setdefault(e["tensor"], {})[e["type"]] = {k: e[k] for k in e
                                                      if k not in ("tensor", "type")}
    return out


def _head_weights(spec: Spec, samples: dict) -> dict[str, np.ndarray]:
    """Column weights of the output head, which has no imatrix entry: the mean squares of its
    sampled inputs (the final normed hidden states)."""
    name = "token_embd.weight" if spec.model.tied_embeddings else "output.weight"
    x = samples.get(name)
    return {} if x is None else {name: np.mean(np.square(x, dtype=np.float64), axis=0)}


def _quantize(spec: Spec, data: dict, cache: QuantCache, ui: Ui) -> tuple[dict, dict]:
    """Every quantizable tensor at every written type of ``--types``: packed once (the cache),
    its error energy and cosine importance. Entries are journaled one by one."""
    folder, model, target = spec.measure_dir, spec.model, spec.opts.target
    index = _index_rows(folder / "quant-index.json")
    journal = folder / "quant-index.partial.jsonl"
    for n, row in _index_rows(journal).items():
        index.setdefault(n, {}).update(row)
    todo = [(t, sorted(set(tensor_options(t, target, list(spec.types))) - set(index.get(t.name,
             {})))) for t in model.quantizable(target)]
    todo = [(t, types) for t, types in todo if types]
    done_types = sorted(set(data["parts"].get("quant", {}).get("types", [])) | set(spec.types))
    if not todo and "quant" in data["parts"] and set(spec.types) <= set(
            data["parts"]["quant"]["types"]):
        return data, index
    t0 = time.perf_counter()
    with np.load(folder / "samples.npz") as z:
        samples = {k: z[k] for k in z.files}
    head = _head_weights(spec, samples)
    total, done = sum(len(types) for _, types in todo), 0
    with open(journal, "a") as log:
        for t, types in todo:
            imp = tensor_importance(model, {t.name: samples[t.name]}, types, cache) \
                if t.name in samples else {}
            for ty in types:
                e = {"tensor": t.name, "type": ty,  # keep=False: not every type held at once
                     "bytes": int(cache.packed(t.name, ty, keep=False).nbytes),
                     "error": cache.error(t.name, ty, head.get(t.name)),
                     **{k: imp[t.name][ty][k] for k in ("cos", "rel_err")
                        if t.name in imp and ty in imp[t.name]}}
                log.write(json.dumps(e) + "\n")
                index.setdefault(t.name, {})[ty] = {k: e[k] for k in e
                                                    if k not in ("tensor", "type")}
                done += 1
                ui.progress("quantization cache", done, total)
            log.flush()
            cache.drop(t.name)
    order = {t.name: i for i, t in enumerate(model.quantizable(target))}
    ordered = {n: dict(sorted(index[n].items())) for n in sorted(index, key=order.get)}
    write_json(folder / "quant-index.json", [{"tensor": n, "type": ty, **e}
                                            for n, row in ordered.items() for ty, e in row.items()])
    journal.unlink(missing_ok=True)
    _timed(spec, "quantization cache", time.perf_counter() - t0)
    return _record(spec, data, "quant", ["quant-index.json"], types=done_types), ordered


# ---------------------------------------------------------------- part 3: calibration probes


def _probe_table(spec: Spec, index: dict):
    """Probes run on the space without pins or user ties: their scales serve any study."""
    space = build_space(spec.model, spec.opts.target, list(spec.types), [], ())
    errors = {n: {t: e["error"] for t, e in row.items()} for n, row in index.items()}
    return space, unit_table(space, error_loss(space, errors))


def _probes(spec: Spec, data: dict, index: dict, session, ui: Ui) -> tuple[dict, Probes]:
    """One base and one probe per role on the trials' calibration chunks: the role scales."""
    key, folder = spec.probe.key(), spec.measure_dir
    path = folder / "probes" / f"{key}.json"
    known = {r["sha"]: r["kld"] for r in json.loads(path.read_text())["results"]} \
        if path.is_file() else {}
    space, table = _probe_table(spec, index)
    roles, role = group_roles(space)
    probe_bytes = int(spec.probe.probe_bpw * spec.model.n_elements / 8)
    base, probes = S.probe_choices(table, role, probe_level(table, probe_bytes, space.fixed_bytes))
    named = [("base", base)] + [(r, c) for r, c in zip(roles, probes)]
    t0, results = time.perf_counter(), []
    chunks, n = list(range(spec.probe.chunks)), spec.probe.chunks
    for i, (name, c) in enumerate(named):
        plan = to_plan(table, c)
        sha = plan_sha(plan)
        if sha not in known:
            tick = lambda d, i=i: ui.progress("calibration probes", i * n + d, len(named) * n)  # noqa: E731
            known[sha] = float(evaluate_staged(session, plan, chunks, tick)["kld_mean"])
            _write_probes(path, spec.probe, [*results, (name, sha, known[sha])], None)
        results.append((name, sha, known[sha]))
        ui.progress("calibration probes", (i + 1) * n, len(named) * n)
    y = [r[2] for r in results]
    s = role_scales(table, role, base, probes, y[0], y[1:])
    scales = {r: float(v) for r, v in zip(roles, s)}
    _write_probes(path, spec.probe, results, scales)
    _timed(spec, "calibration probes", time.perf_counter() - t0)
    rel = path.relative_to(folder).as_posix()
    if data["parts"].get(f"probes:{key}", {}).get("files", {}).get(rel) != _sha(path):
        data = _record(spec, data, f"probes:{key}", [rel])
    return data, Probes(spec.probe, scales, y[0], tuple(results))


def _write_probes(path: Path, settings: ProbeSettings, results, scales) -> None:
    write_json(path, {"settings": {"types": list(settings.types), "chunks": settings.chunks,
                                   "probe_bpw": settings.probe_bpw},
                      "results": [{"probe": n, "sha": s, "kld": k} for n, s, k in results],
                      "role_scales": scales})


# ---------------------------------------------------------------- the stage


def measure(spec: Spec, ui: Ui = SILENT, session: EvalSession | None = None) -> Measurement:
    """The measurement of ``spec``: read where complete, computed (or resumed) where not.
    ``session``: the calibration session to use (``calib_session``), else one is made."""
    data = _open(spec)
    data = _scores(spec, data, ui)
    folder = spec.measure_dir
    imatrix_path = imatrix_of(spec)
    session = session or calib_session(spec, ui)
    data, index = _quantize(spec, data, session.cache, ui)
    data, probes = _probes(spec, data, index, session, ui)
    sim = json.loads((folder / "similarity.json").read_text())
    return Measurement(folder, data["settings"], imatrix_path,
                       {k: {int(L): c for L, c in v.items()} for k, v in sim.items()},
                       index, probes)


def imatrix_of(spec: Spec) -> Path | None:
    return None if spec.opts.no_imatrix else spec.measure_dir / "imatrix.gguf"


def calib_session(spec: Spec, ui: Ui = SILENT) -> EvalSession:
    """The calibration session the probes, the trials and the final pick share (after the
    measurement's imatrix exists)."""
    model, path = spec.model, imatrix_of(spec)
    imatrix = None if path is None else read_imatrix(path).for_quantizer(model)
    tokens = corpus_tokens(model, read_corpus(spec.opts.calib, "calib"))
    return EvalSession(model, tokens, spec.opts.ctx, spec.calib_chunks, spec.opts.target,
                       imatrix, spec.measure_dir, progress=ui.staged("base statistics"))
