"""Library functions behind the CLI commands: each returns a JSON-able dict; ``format_*``
render the same dict as a human table."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


from objectives import GGUFModel, default_model_path, open_gguf

from ._budget import human_size
from ._progress import StageBar
from ._recipe import load_recipe, recipe_from_gguf, save_recipe
from ._sizes import plan_bytes, tensor_options, uniform_plans


def load_model(path: str | Path | None) -> GGUFModel:
    return open_gguf(path if path else default_model_path())


def _size(nbytes: int, n_elements: int) -> dict:
    return {"bytes": nbytes, "mib": round(nbytes / 2**20, 2), "gib": round(nbytes / 2**30, 4),
            "bpw": round(8 * nbytes / n_elements, 4)}


def inspect(model: GGUFModel, targets: list[str]) -> dict:
    h = model.hparams()
    tensors = []
    for t in model.tensors.values():
        row = {"name": t.name, "role": t.role, "layer": t.layer, "shape": list(t.shape),
               "type": t.qtype.name, "bytes": t.nbytes, "can_take": {}}
        q = {tgt: {x.name for x in model.quantizable(tgt)} for tgt in targets}
        for tgt in targets:
            row["can_take"][tgt] = sorted(tensor_options(t, tgt)) if t.name in q[tgt] else None
        tensors.append(row)
    uniform = {tgt: [{**r, **_size(r["bytes"], model.n_elements)} for r in uniform_plans(model, tgt)]
               for tgt in targets}
    return {"model": model.identity(), "hparams": h.__dict__, "tied_embeddings":
            model.tied_embeddings, "size": _size(model.nbytes, model.n_elements),
            "tensors": tensors, "uniform": uniform}


def format_inspect(r: dict) -> str:
    m, h = r["model"], r["hparams"]
    lines = [f"{m['name']} ({m['arch']}, {h['n_layer']} layers, n_embd {h['n_embd']}, "
             f"n_ff {h['n_ff']}, heads {h['n_head']}/{h['n_head_kv']}"
             f"{', tied embeddings' if r['tied_embeddings'] else ''})",
             f"{len(r['tensors'])} tensors, {m['n_elements']:,} weights, "
             f"{human_size(m['bytes'], m['n_elements'])} as stored", ""]
    lines += _tensor_groups(r["tensors"])
    for tgt, rows in r["uniform"].items():
        lines += ["", f"uniform recipes, {tgt} (every quantizable tensor asks for one type):",
                  f"  {'type':9} {'MiB':>9} {'GiB':>8} {'BPW':>8}  fallbacks"]
        lines += [f"  {u['type']:9} {u['mib']:9.2f} {u['gib']:8.4f} {u['bpw']:8.4f}  {u['fallbacks']}"
                  for u in rows]
    return "\n".join(lines)


def _tensor_groups(tensors: list[dict]) -> list[str]:
    """One line per (role, shape, stored type): layers and the types it can take."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for t in tensors:
        groups[(t["role"], tuple(t["shape"]), t["type"])].append(t)
    lines = [f"{'role':16} {'shape':>14} {'stored':7} {'n':>4}  can take (after fallback)"]
    for (role, shape, typ), ts in groups.items():
        take = ts[0]["can_take"]
        desc = "; ".join(f"{k}: {' '.join(v)}" for k, v in take.items() if v) or "not quantized"
        lines.append(f"{role:16} {'x'.join(map(str, shape)):>14} {typ:7} {len(ts):4}  {desc}")
    return lines


def as_recipe(model: GGUFModel, target: str | None) -> dict:
    return recipe_from_gguf(model, target)


def mix(model: GGUFModel, ftype: str, target: str, imatrix: bool, pure: bool) -> dict:
    from ._mixes import mix_types

    written = mix_types(model, ftype, target, imatrix=imatrix, pure=pure)
    counts: dict[str, int] = defaultdict(int)
    for v in written.values():
        counts[v] += 1
    return {"ftype": ftype, "target": target, "imatrix": imatrix, "pure": pure,
            "tensors": written, "counts": dict(counts),
            **_size(plan_bytes(model, written, target), model.n_elements)}


def format_mix(r: dict) -> str:
    lines = [f"{r['ftype']} ({r['target']}, {'with' if r['imatrix'] else 'without'} imatrix"
             f"{', pure' if r['pure'] else ''}): {r['mib']:.2f} MiB, {r['bpw']:.4f} BPW"]
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items())))
    lines += [f"  {n:36} {t}" for n, t in r["tensors"].items()]
    return "\n".join(lines)


def export(recipe_path: Path, fmt: str, out_dir: Path, imatrix: Path | None) -> dict:
    from ._export import write_export

    recipe = load_recipe(recipe_path)
    out_dir = Path(out_dir)
    if fmt == "json":
        return {"files": [str(save_recipe(recipe, out_dir / "recipe.json"))], "notes": []}
    files, notes = write_export(recipe["tensors"], recipe["shapes"], recipe["target"], fmt,
                                out_dir, imatrix=imatrix,
                                input_quantized=bool(recipe.get("input_quantized")))
    return {"files": [str(f) for f in files], "notes": notes}


def format_export(r: dict, max_notes: int = 12) -> str:
    notes = [f"note: {n}" for n in r["notes"][:max_notes]]
    if len(r["notes"]) > max_notes:
        notes.append(f"note: ... and {len(r['notes']) - max_notes} more (--json lists all)")
    return "\n".join([*(f"wrote {f}" for f in r["files"]), *notes])





def evaluate_recipe(model_path, recipe_path: Path, imatrix: str | None, text: str | None,
                    ctx: int, chunks: int | None, act_round: bool, progress: bool) -> dict:
    """``search eval``: the recipe's PPL/KLD against the model's own weights."""
    from objectives import corpus_tokens, evaluate, read_corpus, read_imatrix

    from ._sizes import resolve_plan

    model = load_model(model_path)
    recipe = load_recipe(recipe_path)
    plan = resolve_plan(model, recipe["tensors"], recipe["target"])
    imat = read_imatrix(imatrix).for_quantizer(model) if imatrix else None
    tokens = corpus_tokens(model, read_corpus(text, "eval"))
    bar = StageBar(progress)
    try:
        res = evaluate(model, recipe=plan, imatrix=imat, tokens=tokens, ctx=ctx, n_chunks=chunks,
                       base_cache=Path("studies") / ".cache" / "base", act_round=act_round,
                       target=recipe["target"], progress=bar)
    finally:
        bar.close()
    return {k: (float(v) if hasattr(v, "dtype") else v) for k, v in res.items()}


def format_eval(r: dict) -> str:
    """llama-perplexity's --kl-divergence summary layout."""
    return "\n".join([
        f"chunks {r['n_chunks']} x {r['ctx']}, {r['n_tokens']} scored tokens",
        f"Mean PPL(Q)                   : {r['ppl']:10.6f} +/- {r['ppl_err']:10.6f}",
        f"Mean PPL(base)                : {r['ppl_base']:10.6f} +/- {r['ppl_base_err']:10.6f}",
        f"Mean ln(PPL(Q)/PPL(base))     : {r['ln_ppl_ratio']:10.6f} +/- {r['ln_ppl_ratio_err']:10.6f}",
        f"Mean    KLD: {r['kld_mean']:10.6f} +/- {r['kld_err']:10.6f}",
        f"Maximum KLD: {r['kld_max']:10.6f}",
        f"99.9%   KLD: {r['kld_p999']:10.6f}",
        f"99.0%   KLD: {r['kld_p99']:10.6f}",
        f"95.0%   KLD: {r['kld_p95']:10.6f}",
        f"90.0%   KLD: {r['kld_p90']:10.6f}",
        f"Median  KLD: {r['kld_median']:10.6f}",
        f"RMS Δp    : {100 * r['rms_dp']:6.3f} +/- {100 * r['rms_dp_err']:5.3f} %",
        f"Same top p: {100 * r['same_top_p']:6.3f} +/- {100 * r['same_top_p_err']:5.3f} %"])


def dashboard(study: str | None, storage: str | None, studies_dir: Path, host: str,
              port: int) -> None:
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from quant import UserError

    from ._storage import default_url, open_storage

    if storage is None:
        dirs = sorted((d for d in studies_dir.glob("*/study.db")), key=lambda p: p.stat().st_mtime)
        chosen = studies_dir / study / "study.db" if study else (dirs[-1] if dirs else None)
        if chosen is None or not chosen.is_file():
            raise UserError(f"no study {'named ' + study if study else ''} under {studies_dir}: "
                            "run 'search --budget ...' first or give --storage")
        storage, art = default_url(chosen.parent), chosen.parent / "artifacts"
    else:
        art = studies_dir / (study or "dashboard") / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    print(f"optuna-dashboard on http://{host}:{port} (Ctrl-C to stop)")
    run_server(open_storage(storage), host=host, port=port,
               artifact_store=FileSystemArtifactStore(str(art)))
