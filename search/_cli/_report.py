"""``search report``: a finished study's summary, from its report.json (checked against the
measurement it was made from)."""

from __future__ import annotations

import json
from pathlib import Path

from quant import UserError

from ._args import Parser, studies_dir_arg, json_arg
from ._output import emit
from ._search import format_summary


def main(argv: list[str]) -> int:
    p = Parser(prog="search report", description="The summary of a finished study.")
    p.add_argument("--study", help="study name (a folder of the studies folder; default: the "
                   "newest with a report)")
    studies_dir_arg(p)
    json_arg(p)
    a = p.parse_args(argv)
    emit(load_report(Path(a.studies_dir), a.study), bool(a.json), format_summary)
    return 0


def load_report(studies: Path, study: str | None) -> dict:
    if study:
        path = studies / study / "report.json"
    else:
        found = sorted(studies.glob("*/report.json"), key=lambda p: p.stat().st_mtime)
        path = found[-1] if found else studies / "NAME" / "report.json"
    if not path.is_file():
        raise UserError(f"no report at {path}: run 'search --budget ...' to the end first")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}): run the study again") from None
    _check_measurement(report)
    return report


def _check_measurement(report: dict) -> None:
    """The measurement the study read must still be the same (its manifest's settings)."""
    from objectives import open_gguf

    folder = Path(report.get("measurement", ""))
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return
    settings = json.loads(manifest.read_text()).get("settings", {})
    model = Path(report.get("model", ""))
    if model.is_file():
        now = open_gguf(model).identity()["sha256_header_and_heads"]
        if settings.get("model") not in (None, now):
            raise UserError(f"{model} changed since the study was measured ({folder}): run the "
                            "study again on the new file")
