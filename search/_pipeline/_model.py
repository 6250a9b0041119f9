"""The model a command works on: a path, a short name (smollm2, gemma3-270m), or the default."""

from __future__ import annotations

from pathlib import Path

from objectives import GGUFModel, open_gguf, resolve_model


def load_model(path: str | Path | None) -> GGUFModel:
    return open_gguf(resolve_model(path))
