"""argparse pieces shared by the commands: one-line errors, and arguments built from the
``SearchOptions`` fields (their defaults and valid values shown in ``--help``, defined once)."""

from __future__ import annotations

import argparse
from dataclasses import MISSING

from quant import UserError

from .._pipeline import option_fields


class _Formatter(argparse.HelpFormatter):
    """Wraps help at spaces only, so names like MODEL-TARGET-BUDGET stay whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one-line UserErrors (printed by ``main``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="GGUF model (first file of a split) or a short "
                   "name (smollm2, gemma3-270m); default: the embedded SmolLM2-135M-Instruct")


def studies_dir_arg(p: argparse.ArgumentParser, what: str = "home of studies") -> None:
    from .._pipeline import default_of

    p.add_argument("--studies-dir", default=default_of("studies_dir"),
                   help=f"{what} (default: {default_of('studies_dir')})")


def json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", default=None,
                   help="print JSON instead of tables")


def _help(f) -> str:
    meta, default = f.metadata, f.default
    text = meta["help"]
    if meta.get("required"):
        return f"{text} (required, or 'budget' in the --config file)"
    if meta.get("default_text"):
        return f"{text} (default: {meta['default_text']})"
    if meta.get("flag_only") or default in (None, (), MISSING):
        return text
    return f"{text} (default: {default})"


def add_options(p: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """``SearchOptions`` fields as arguments; each given value is None when not given, so a
    study file's value (or the field's default) applies."""
    for f in option_fields():
        if (names is not None and f.name not in names) or f.name == "json":
            continue
        meta = f.metadata
        if meta.get("positional"):
            p.add_argument(f.name, nargs="?", help=_help(f))
            continue
        flags = [meta.get("flag") or "--" + f.name.replace("_", "-")]
        if flags[0] == "-f":
            flags.append("--" + f.name.replace("_", "-"))
        kw: dict = {"dest": f.name, "help": _help(f), "default": None}
        if meta.get("flag_only"):
            kw["action"] = "store_true"
        elif meta.get("append"):
            kw.update(action="append", metavar=meta.get("metavar"))
        elif meta.get("list"):
            kw["type"] = csv
        elif meta.get("type"):
            kw["type"] = meta["type"]
        if meta.get("metavar") and "metavar" not in kw:
            kw["metavar"] = meta["metavar"]
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
            kw["help"] += f"; one of {', '.join(meta['choices'])}"
        p.add_argument(*flags, **kw)
