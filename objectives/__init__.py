"""GGUF loading, tokenizer, JAX forward pass, PPL/KLD and importance scores."""

from __future__ import annotations

from ._gguf import GGUFError
from ._gguf import GGUFModel
from ._gguf import Hparams
from ._gguf import TensorInfo
from ._gguf import is_quantizable
from ._gguf import open_gguf
from ._model_file import default_model_path
from ._tokenizer import Tokenizer

__all__ = ["GGUFError", "GGUFModel", "Hparams", "TensorInfo", "Tokenizer", "default_model_path",
           "is_quantizable", "open_gguf"]
