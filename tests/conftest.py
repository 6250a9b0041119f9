"""Shared fixtures: the embedded default model and small GGUF files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def smollm2():
    from objectives import default_model_path, open_gguf

    return open_gguf(default_model_path())


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
