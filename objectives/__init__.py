"""GGUF loading, tokenizer, JAX forward pass, PPL/KLD and importance scores."""

from __future__ import annotations

from ._corpus import corpus_path
from ._cost import ForwardCost
from ._cost import cache_quantize_bytes
from ._cost import forward_costs
from ._cost import head_resident_bytes
from ._cost import head_work_bytes
from ._cost import layer_resident_bytes
from ._cost import trial_weights_bytes
from ._corpus import default_corpus
from ._corpus import read_corpus
from ._eval import bos_id
from ._eval import corpus_tokens
from ._eval import evaluate
from ._eval import make_chunks
from ._gguf import GGUFError
from ._gguf import GGUFModel
from ._gguf import Hparams
from ._gguf import TensorInfo
from ._gguf import is_quantizable
from ._gguf import layer_of
from ._gguf import open_gguf
from ._gguf_write import GGUFWriteError
from ._gguf_write import imatrix_metadata
from ._gguf_write import merge_gguf
from ._gguf_write import split_gguf
from ._gguf_write import write_quantized
from ._imatrix import Imatrix
from ._imatrix import read_imatrix
from ._imatrix import write_dat
from ._imatrix import write_gguf
from ._model_file import MODELS
from ._model_file import default_model_path
from ._model_file import resolve_model
from ._models import supported_architectures
from ._qcache import QuantCache
from ._scores import collect
from ._scores import collect_scores
from ._scores import similarity_rows
from ._scores import tensor_importance
from ._scores import measure_sensitivity
from ._session import EvalSession
from ._tokenizer import Tokenizer
from ._version import tool_version

__all__ = [
    "cache_quantize_bytes", "head_resident_bytes", "head_work_bytes",
           "layer_resident_bytes", "trial_weights_bytes",
    "GGUFWriteError", "imatrix_metadata", "merge_gguf", "split_gguf", "write_quantized",
           "QuantCache", "bos_id", "collect", "similarity_rows", "tensor_importance",
           "write_dat", "write_gguf", "EvalSession", "GGUFError", "GGUFModel", "Hparams", "Imatrix", "TensorInfo", "Tokenizer",
           "ForwardCost", "forward_costs", "corpus_path", "corpus_tokens", "default_corpus", "default_model_path", "resolve_model", "MODELS", "evaluate", "is_quantizable", "layer_of",
           "collect_scores", "make_chunks", "measure_sensitivity", "open_gguf", "read_corpus",
           "read_imatrix", "supported_architectures", "tool_version"]
