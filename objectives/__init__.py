"""GGUF loading, tokenizer, JAX forward pass, PPL/KLD and importance scores."""

from __future__ import annotations

from ._corpus import default_corpus
from ._corpus import read_corpus
from ._eval import corpus_tokens
from ._eval import evaluate
from ._eval import make_chunks
from ._gguf import GGUFError
from ._gguf import GGUFModel
from ._gguf import Hparams
from ._gguf import TensorInfo
from ._gguf import is_quantizable
from ._gguf import open_gguf
from ._imatrix import Imatrix
from ._imatrix import read_imatrix
from ._model_file import default_model_path
from ._models import supported_architectures
from ._scores import collect_scores
from ._scores import measure_sensitivity
from ._session import EvalSession
from ._tokenizer import Tokenizer

__all__ = ["EvalSession", "GGUFError", "GGUFModel", "Hparams", "Imatrix", "TensorInfo", "Tokenizer",
           "corpus_tokens", "default_corpus", "default_model_path", "evaluate", "is_quantizable",
           "collect_scores", "make_chunks", "measure_sensitivity", "open_gguf", "read_corpus",
           "read_imatrix", "supported_architectures"]
