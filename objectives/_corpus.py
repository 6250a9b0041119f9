"""The bundled default corpora (objectives/data, see its README for source and licence).

    default_corpus("eval" | "calib") -> str      the text, UTF-8
    corpus_path("eval" | "calib")    -> Path
    read_corpus(path or None, kind)  -> str      a user file, or the bundled one when path is None
"""

from __future__ import annotations

from pathlib import Path

from quant import UserError

_DATA = Path(__file__).parent / "data"
KINDS = ("eval", "calib")


def corpus_path(kind: str = "eval") -> Path:
    if kind not in KINDS:
        raise UserError(f"unknown corpus '{kind}': use one of {', '.join(KINDS)}")
    path = _DATA / f"{kind}.txt"
    if not path.is_file():
        raise UserError(f"the bundled corpus {path} is missing: reinstall gguf-recipe-search")
    return path


def default_corpus(kind: str = "eval") -> str:
    return corpus_path(kind).read_text(encoding="utf-8")


def read_corpus(path: str | Path | None, kind: str = "eval") -> str:
    """The text of ``path``, or the bundled corpus of ``kind`` when no path is given."""
    if path is None:
        return default_corpus(kind)
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such corpus file: give a plain-text file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text: convert it to UTF-8") from None
