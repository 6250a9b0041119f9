"""The tool's version (the one lookup): stamped into caches, measurements and recipes."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def tool_version() -> str:
    try:
        return version("gguf-recipe-search")
    except PackageNotFoundError:
        return "0+unknown"
