"""``search dashboard``: a study live in optuna-dashboard (trial recipes as artifacts)."""

from __future__ import annotations

from pathlib import Path

from quant import UserError

from .._study import default_url, open_storage
from ._args import Parser, studies_dir_arg


def main(argv: list[str]) -> int:
    p = Parser(prog="search dashboard", description="Watch a study live in optuna-dashboard.")
    p.add_argument("--study", help="study name (a folder of the studies folder; default: the "
                   "newest)")
    p.add_argument("--storage", help="storage URL (default: STUDIES_DIR/NAME/study.db)")
    studies_dir_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    a = p.parse_args(argv)
    serve(a.study, a.storage, Path(a.studies_dir), a.host, a.port)
    return 0


def serve(study: str | None, storage: str | None, studies_dir: Path, host: str,
          port: int) -> None:
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    if storage is None:
        dirs = sorted(studies_dir.glob("*/study.db"), key=lambda p: p.stat().st_mtime)
        chosen = studies_dir / study / "study.db" if study else (dirs[-1] if dirs else None)
        if chosen is None or not chosen.is_file():
            raise UserError(f"no study {'named ' + study + ' ' if study else ''}under "
                            f"{studies_dir}: run 'search --budget ...' first or give --storage")
        storage, art = default_url(chosen.parent), chosen.parent / "artifacts"
    else:
        art = studies_dir / (study or "dashboard") / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    print(f"optuna-dashboard on http://{host}:{port} (Ctrl-C to stop)")
    run_server(open_storage(storage), host=host, port=port,
               artifact_store=FileSystemArtifactStore(str(art)))
