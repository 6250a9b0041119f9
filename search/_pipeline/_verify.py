"""``search verify``'s library side: the study's prediction checked by the user's real tools.

    verify(study, ...) -> {"measured", "predicted", "rel_diff", "warnings", ...}

Writes the best recipe's GGUF (``write_model``), runs ``llama-perplexity --kl-divergence-base``
on the study's base model and ``--kl-divergence`` on the file (``-nr`` on mainline: repacking
must stay off for quantized files), evaluates the same recipe on the same text and chunks
ourselves, and stores both in report.json (``verify``) and as the study attribute ``verify``.
A difference beyond the two figures' combined uncertainty is a warning naming both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna

from quant import UserError

from objectives import EvalSession, corpus_path, corpus_tokens, open_gguf, read_corpus
from objectives import read_imatrix

from .._json import plain, write_json
from .._llamacpp import find_tool, load_recipe, parse_kld, project_of, run_tool
from .._study import default_url, open_storage
from ._measure import evaluate_staged
from ._write import study_files, write_model
from ._ui import SILENT, Ui

COMPARED = ("kld_mean", "kld_p99", "same_top_p", "ppl")
_ERR = {"kld_mean": "kld_err", "same_top_p": "same_top_p_err", "ppl": "ppl_err"}


def _check_base(report: dict, measurement: Path):
    settings = json.loads((measurement / "manifest.json").read_text())["settings"]
    model = open_gguf(report["model"])
    if model.identity()["sha256_header_and_heads"] != settings["model"]:
        raise UserError(f"{report['model']} is not the model the study measured ({measurement}): "
                        "restore that file or run the study again")
    return model, settings


def _relative(measured: dict, predicted: dict) -> dict:
    return {k: (predicted[k] - measured[k]) / measured[k] if measured.get(k) else None
            for k in COMPARED}


def _warnings(measured: dict, predicted: dict) -> list[str]:
    out = []
    for k, e in _ERR.items():
        err = math.hypot(measured.get(e, 0.0), predicted.get(e, 0.0))
        if abs(measured[k] - predicted[k]) > err:
            out.append(f"{k}: llama-perplexity {measured[k]:.6g} vs predicted {predicted[k]:.6g} "
                       f"(difference beyond the uncertainty ±{err:.2g})")
    return out


def verify(study: str, studies_dir: str = "studies", llama_bin: str | None = None,
           text: str | None = None, chunks: int | None = None, ui: Ui = SILENT) -> dict:
    report, recipe_path, measurement = study_files(studies_dir, study)
    model, settings = _check_base(report, measurement)
    tool = find_tool("llama-perplexity", llama_bin)
    project = project_of(tool)
    recipe = load_recipe(recipe_path)
    if project != recipe.target:
        raise UserError(f"{tool} is a {project} build, but the study's recipe is for "
                        f"{recipe.target}: give the other project's binaries")
    folder = Path(studies_dir) / study / "verify"
    ctx = settings["ctx"]
    n = chunks or report["heldout"].get("n_chunks") or 16
    written = write_model(study, folder / "recipe.gguf", studies_dir=studies_dir, ui=ui)
    corpus = Path(text) if text else None
    text_path = corpus or _bundled_eval()
    nr = ["-nr"] if project == "mainline" else []
    base_kld = folder / f"base-{n}.kld"
    base_quantized = any(not t.qtype.float_type for t in model.quantizable(recipe.target))
    ui.progress("llama-perplexity", 0, 2)
    run_tool([str(tool), "-m", str(model.paths[0]), "-f", str(text_path), "-c", str(ctx),
              "--chunks", str(n), "--kl-divergence-base", str(base_kld),
              *(nr if base_quantized else [])], folder / "base.log")
    ui.progress("llama-perplexity", 1, 2)
    out = run_tool([str(tool), "-m", written["files"][0], "--kl-divergence-base", str(base_kld),
                    "--kl-divergence", "-c", str(ctx), *nr], folder / "kld.log")
    ui.progress("llama-perplexity", 2, 2)
    measured = parse_kld(out)
    m_im = measurement / "imatrix.gguf"
    imat = read_imatrix(m_im).for_quantizer(model) if m_im.is_file() else None
    session = EvalSession(model, corpus_tokens(model, read_corpus(corpus, "eval")), ctx, n,
                          recipe.target, imat, measurement,
                          progress=ui.staged("held-out base statistics"))
    predicted = plain(evaluate_staged(session, recipe.tensors, list(range(session.n_chunks)),
                                      lambda d: ui.progress("prediction", d, session.n_chunks)))
    measured["file_bytes"], predicted["file_bytes"] = written["file_bytes"], written["file_bytes"]
    result = {"tool": str(tool), "project": project, "file": written["files"][0],
              "chunks": n, "measured": measured, "predicted": predicted,
              "rel_diff": _relative(measured, predicted),
              "warnings": _warnings(measured, predicted), "tensor_bytes": written["bytes"]}
    _store(report, study, studies_dir, result)
    return result


def _bundled_eval() -> Path:
    return corpus_path("eval")


def _store(report: dict, study: str, studies_dir: str, result: dict) -> None:
    report = {**report, "verify": plain(result)}
    write_json(Path(studies_dir) / study / "report.json", report)
    url = report.get("storage") or default_url(Path(studies_dir) / study)
    try:
        s = optuna.load_study(study_name=report["study"], storage=open_storage(url))
        s.set_user_attr("verify", plain({k: result[k] for k in
                                         ("measured", "predicted", "rel_diff", "warnings")}))
    except KeyError:
        pass
