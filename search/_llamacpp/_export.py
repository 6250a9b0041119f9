"""Export a recipe to the files the real llama-quantize of each project accepts.

A recipe is ``tensors: dict[name -> ggml type name]`` planned for one ``target`` ("mainline" or
"ik"), with the numpy shapes of the model's tensors (``shape[-1]`` = ne0, the row length).

Symbols:

    compact_rules(types, all_names) -> [(regex, type)]  anchored, non-overlapping, comma-free
    layer_regex(layers)       -> "(1[0-9]|2[0-5])"  digits-only regex for a set of layer numbers
    plan_export(...)          -> ExportPlan   rules carry the type llama-quantize will write
                                              (after its fallback), plus notes and the FTYPE
    write_plan(plan, out_dir) -> [Path]       mainline: tensor-types.txt + quantize-mainline.sh;
                                              ik: custom-q.txt + quantize-ik.sh
    write_export(...)         -> [Path]       plan_export + write_plan
    input_is_quantized(model) -> bool         whether llama-quantize needs --allow-requantize

How the rules reach every tensor (spec 3.4; src/llama-quant.cpp, ik src/llama-quantize.cpp):
both projects consult the regex rules only when the FTYPE's base type is quantized, so the FTYPE is
a quantized one (the type covering most weights, else Q8_0); it then only names the file
type, since every quantizable tensor matches one rule and a matching rule replaces the mix
(mainline: before the mix; ik: after it, also over the output/tied-embedding rule). Neither
script uses ``--pure``: ik ignores ``--custom-q`` under it, and mainline gains nothing from it
when every tensor has a rule. token_embd/output take their rules like any other tensor in both
projects (no ``--token-embedding-type``/``--output-tensor-type``: those would win over the rules
and skip the fallback check). The fallback still runs after a rule, so rules carry the fallback
type: applying it again changes nothing. Mainline lower-cases patterns: every pattern here is
lower-case (upper-case letters and punctuation other than '.', '-', '_' are written ``\\xhh``).
ik splits ``--custom-q`` on ',' and each rule on its first '=': patterns contain neither.

``--allow-requantize`` is decided at export time from the GGUF the recipe was planned on
(``input_is_quantized``); the script says so in a comment.
"""

from __future__ import annotations

import re
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from objectives import is_quantizable
from quant import UserError, check_target, get_type, resolve, type_in_target

from ._ftypes import ftype_of_type, needs_imatrix

Rule = tuple[str, str]

_LAYERED = re.compile(r"^(?P<pre>[^0-9]*?)(?P<n>[0-9]+)\.(?P<rest>.+)$")
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")

_FILES = {"mainline": ("tensor-types.txt", "quantize-mainline.sh"),
          "ik": ("custom-q.txt", "quantize-ik.sh")}


# ---------------------------------------------------------------- regex building


def escape(text: str) -> str:
    """``text`` as a literal regex that lower-casing leaves alone, without ',', '=' or blanks."""
    out = []
    for ch in text:
        if ch in _PLAIN:
            out.append(ch)
        elif ch == ".":
            out.append(r"\.")
        elif ch.isascii():
            out.append(f"\\x{ord(ch):02x}")
        else:
            raise UserError(f"tensor name '{text}' has a non-ASCII character: "
                            "rename the tensor to export rules")
    return "".join(out)


def _digits(a: int, b: int) -> str:
    return str(a) if a == b else f"[{a}-{b}]"


def _fixed_width(lo: str, hi: str) -> list[str]:
    """Alternatives matching every digit string of len(lo) between lo and hi (same length)."""
    if len(lo) == 1:
        return [_digits(int(lo), int(hi))]
    if lo[0] == hi[0]:
        return [lo[0] + p for p in _fixed_width(lo[1:], hi[1:])]
    n, a, b = len(lo) - 1, int(lo[0]), int(hi[0])
    head, tail = [], []
    if lo[1:] != "0" * n:
        head, a = [lo[0] + p for p in _fixed_width(lo[1:], "9" * n)], a + 1
    if hi[1:] != "9" * n:
        tail, b = [hi[0] + p for p in _fixed_width("0" * n, hi[1:])], b - 1
    middle = [_digits(a, b) + "[0-9]" * n] if a <= b else []
    return head + middle + tail


def range_alternatives(lo: int, hi: int) -> list[str]:
    """Alternatives (no ``{m,n}``) matching exactly lo..hi written without leading 0s."""
    if len(str(lo)) < len(str(hi)):
        edge = 10 ** len(str(lo)) - 1
        return range_alternatives(lo, edge) + range_alternatives(edge + 1, hi)
    return _fixed_width(str(lo), str(hi))


def _runs(numbers: Iterable[int]) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return [(a, b) for a, b in runs]


def _alternation(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"


def layer_regex(layers: Iterable[int]) -> str:
    """A regex for exactly these layer numbers: consecutive layers collapse into digit ranges."""
    return _alternation([p for a, b in _runs(layers) for p in range_alternatives(a, b)])


def _names_regex(names: Sequence[str]) -> str:
    """Literal alternation of ``names`` with their common '.'-suffix factored out."""
    names = sorted(names)
    common = _common_suffix(names) if len(names) > 1 else ""
    stems = [escape(n[: len(n) - len(common)]) for n in names]
    return _alternation(stems) + escape(common)


def _common_suffix(names: Sequence[str]) -> str:
    suffix = names[0]
    for n in names[1:]:
        while not n.endswith(suffix):
            suffix = suffix[1:]
    dot = suffix.find(".")
    suffix = suffix[dot:] if dot >= 0 else ""
    return suffix if all(len(n) > len(suffix) for n in names) else ""


# ---------------------------------------------------------------- compaction


def _layer_of(name: str) -> tuple[str, int, str] | None:
    """(prefix, layer, rest) of a ``pre<digits>.rest`` name without a leading 0, else None."""
    m = _LAYERED.match(name)
    if m is None or str(int(m["n"])) != m["n"]:
        return None
    return m["pre"], int(m["n"]), m["rest"]


def _family_members(all_names: Iterable[str]) -> dict[tuple[str, str], set[str]]:
    """Every name that ``^pre[0-9]+\\.rest$`` would match, by (pre, rest)."""
    members: dict[tuple[str, str], set[str]] = defaultdict(set)
    for name in all_names:
        m = _LAYERED.match(name)
        if m:
            members[m["pre"], m["rest"]].add(name)
    return members


def _group(types: Mapping[str, str]) -> tuple[dict, dict]:
    """Layered names as {(pre, rest, type): {layer: name}}, the others as {type: [name]}."""
    layered: dict[tuple[str, str, str], dict[int, str]] = defaultdict(dict)
    single: dict[str, list[str]] = defaultdict(list)
    for name, t in types.items():
        parsed = _layer_of(name)
        if parsed is None:
            single[t].append(name)
        else:
            pre, layer, rest = parsed
            layered[pre, rest, t][layer] = name
    return layered, single


def _layered_rules(layered: dict, members: dict) -> list[tuple[list[str], str, str]]:
    """Merge families with the same prefix, type and layer regex into one rule each."""
    merged: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    names: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for (pre, rest, t), by_layer in layered.items():
        full = members[pre, rest] == set(by_layer.values())
        key = (pre, "[0-9]+" if full else layer_regex(by_layer), t)
        merged[key].append(rest)
        names[key].extend(by_layer.values())
    rules = []
    for (pre, layers, t), rests in merged.items():
        pattern = "^" + escape(pre) + layers + r"\." + _names_regex(rests) + "$"
        rules.append((names[pre, layers, t], pattern, t))
    return rules


def compact_rules(tensors: Mapping[str, str], all_names: Iterable[str],
                  target: str | None = None) -> list[Rule]:
    """Anchored, non-overlapping ``(regex, type)`` rules giving each of ``tensors`` its type.

    ``all_names`` are all tensor names of the model (norms included): a layer family whose every
    member has one type gets ``[0-9]+``. Types are spelled as ``ggml_type_name``; with ``target``
    a type that project lacks raises ``TargetError``. Rules come in file order of their first
    tensor.
    """
    lookup = (lambda t: type_in_target(t, target)) if target else get_type
    canon = {n: lookup(t).name for n, t in tensors.items()}
    order = {n: i for i, n in enumerate(dict.fromkeys([*all_names, *canon]))}
    layered, single = _group(canon)
    rules = _layered_rules(layered, _family_members(order))
    rules += [(names, "^" + _names_regex(names) + "$", t) for t, names in single.items()]
    rules.sort(key=lambda r: min(order[n] for n in r[0]))
    return [(pattern, t) for _, pattern, t in rules]


def check_rules(rules: Sequence[Rule], expected: Mapping[str, str], all_names: Iterable[str],
                target: str) -> None:
    """Apply ``rules`` as llama-quantize does (``regex_search``; mainline lower-cases the pattern)
    and raise ``RuntimeError`` (a bug here) unless each expected tensor matches exactly one rule,
    of its type, and no other tensor matches any."""
    compiled = [(re.compile(p.lower() if target == "mainline" else p), t) for p, t in rules]
    for name in dict.fromkeys([*all_names, *expected]):
        hits = [t for rx, t in compiled if rx.search(name)]
        want = [expected[name]] if name in expected else []
        if hits != want:
            raise RuntimeError(f"export bug: rules give {name} {hits}, expected {want}")
    if any("," in p or "=" in p or not (p.startswith("^") and p.endswith("$")) for p, _ in rules):
        raise RuntimeError("export bug: a rule is unanchored or holds ',' or '='")


# ---------------------------------------------------------------- planning


@dataclass
class ExportPlan:
    """What both writers need: the rules (types after the fallback) and the command's parts."""

    target: str
    rules: list[Rule]
    ftype: str
    notes: list[str] = field(default_factory=list)
    imatrix: str | None = None
    input_quantized: bool = False
    n_tensors: int = 0


Shapes = Mapping[str, Sequence[int]]


def _resolve_all(tensors: Mapping[str, str], shapes: Shapes, target: str):
    final, notes = {}, []
    for name, planned in tensors.items():
        if name not in shapes:
            raise UserError(f"recipe tensor '{name}' is not in the model: "
                            "export with the model the recipe was made for")
        planned = type_in_target(planned, target).name
        final[name] = resolve(planned, shapes[name], target)
        if final[name] != planned:
            ne0 = tuple(shapes[name])[-1]
            notes.append(f"{name}: {planned} falls back to {final[name]} "
                         f"on rows of {ne0} ({target})")
    return final, notes


def _coverage_notes(tensors: Mapping[str, str], shapes: Shapes, target: str) -> list[str]:
    missing = [n for n, s in shapes.items()
               if n not in tensors and is_quantizable(n, tuple(reversed(s)), target)]
    return [f"{n}: not in the recipe, llama-quantize gives it the FTYPE's mix type"
            for n in missing]


def _imatrix_notes(final: Mapping[str, str], target: str, imatrix: str | None) -> list[str]:
    if imatrix:
        return []
    need = defaultdict(int)
    for name, t in final.items():
        if needs_imatrix(name, t, target):
            need[t] += 1
    return [f"{t} on {n} tensor(s) needs an imatrix: {target} llama-quantize refuses it "
            "without --imatrix" for t, n in sorted(need.items())]


def choose_ftype(final: Mapping[str, str], shapes: Shapes, target: str) -> str:
    """The FTYPE of the quantized type holding most weights (Q8_0 if none has a plain FTYPE)."""
    weight = defaultdict(int)
    for name, t in final.items():
        weight[t] += _n_elements(shapes[name])
    for t in sorted(weight, key=lambda k: (-weight[k], k)):
        if ftype_of_type(t, target):
            return ftype_of_type(t, target)
    return "Q8_0"


def _n_elements(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _check_imatrix(imatrix: str | Path | None, target: str) -> str | None:
    if imatrix is None:
        return None
    path = Path(imatrix).expanduser().resolve()
    is_gguf = path.suffix == ".gguf" or (path.is_file() and path.read_bytes()[:4] == b"GGUF")
    if target == "ik" and is_gguf:
        raise UserError(f"ik llama-quantize reads only legacy .dat imatrix files, not "
                        f"{path.name}: make one with llama-imatrix --output-format dat")
    return str(path)


def plan_export(tensors: Mapping[str, str], shapes: Shapes | Iterable, target: str,
                imatrix: str | Path | None = None, input_quantized: bool = False) -> ExportPlan:
    """Rules, FTYPE and notes for ``tensors`` (name -> planned type) on a model with ``shapes``
    (name -> numpy shape, every tensor of the model; a list of (name, shape) pairs also works)."""
    check_target(target)
    shapes = dict(shapes)
    final, notes = _resolve_all(tensors, shapes, target)
    rules = compact_rules(final, shapes, target)
    check_rules(rules, final, shapes, target)
    notes += _coverage_notes(tensors, shapes, target) + _imatrix_notes(final, target, imatrix)
    return ExportPlan(target, rules, choose_ftype(final, shapes, target), notes,
                      _check_imatrix(imatrix, target), input_quantized, len(final))


def input_is_quantized(model, target: str = "mainline") -> bool:
    """Whether a tensor llama-quantize converts is stored quantized (--allow-requantize needed)."""
    return any(not t.qtype.float_type for t in model.quantizable(target))


# ---------------------------------------------------------------- writing


def render_tensor_types(rules: Sequence[Rule]) -> str:
    """mainline --tensor-type-file: one ``PATTERN=TYPE`` token per line (no comments allowed)."""
    return "".join(f"{p}={t}\n" for p, t in rules)


def render_custom_q(rules: Sequence[Rule]) -> str:
    """ik rules, one ``regex=type`` per line (join with ',' for --custom-q)."""
    return render_tensor_types(rules)


def _comment(lines: Iterable[str]) -> list[str]:
    return [f"#   {line}" for line in lines]


_HERE = 'here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"'


def _imatrix_arg(plan: ExportPlan, out_dir: Path | None) -> str:
    """The imatrix as the script names it: beside the script as ``$here/...`` (the folder can be
    moved or shared), else the absolute path."""
    path = Path(plan.imatrix)
    if out_dir is not None:
        try:
            return '"$here/' + path.relative_to(Path(out_dir).resolve()).as_posix() + '"'
        except ValueError:
            pass
    return shlex.quote(str(path))


def _options(plan: ExportPlan, imatrix: str | None) -> list[str]:
    opts = ["--allow-requantize"] if plan.input_quantized else []
    return opts + (["--imatrix", imatrix] if imatrix else [])


def _header(plan: ExportPlan, script: str) -> list[str]:
    lines = [
        "#!/usr/bin/env bash",
        f"# Generated by gguf-recipe-search for {_PROJECT[plan.target]}: "
        f"{plan.n_tensors} tensors, {len(plan.rules)} rules.",
        f"# Usage: {script} IN.gguf OUT.gguf [nthreads]",
        "#   IN.gguf: the model the recipe was planned on (unquantized, or as planned);",
        "#   LLAMA_QUANTIZE=/path/to/llama-quantize picks the binary;",
        "#   QUANTIZE_FLAGS='--dry-run' adds options.",
        f"# FTYPE {plan.ftype} only names the file type: every quantizable tensor matches exactly",
        "# one rule, and rules apply only when the FTYPE's base type is quantized.",
    ]
    if plan.target == "ik":
        lines.append("# No --pure: ik ignores --custom-q under it.")
    if plan.input_quantized:
        lines.append("# --allow-requantize: the GGUF this recipe was planned on is quantized.")
    if plan.notes:
        lines.append("# Notes (the rules already carry the type llama-quantize will write):")
        lines += _comment(plan.notes)
    return lines


_PROJECT = {"mainline": "llama.cpp (mainline) llama-quantize",
            "ik": "ik_llama.cpp llama-quantize"}
_PREAMBLE = [
    "set -euo pipefail",
    'if [ "$#" -lt 2 ]; then echo "usage: $0 IN.gguf OUT.gguf [nthreads]" >&2; exit 2; fi',
    'read -r -a extra <<< "${QUANTIZE_FLAGS:-}"',
    _HERE,
]
_RUN = 'exec "${LLAMA_QUANTIZE:-llama-quantize}" ${extra[@]+"${extra[@]}"}'
_TAIL = '"$1" "$2" {ftype} ${{3:+"$3"}}'


def render_mainline_script(plan: ExportPlan, out_dir: Path | None = None) -> str:
    imatrix = _imatrix_arg(plan, out_dir) if plan.imatrix else None
    overrides = [f"--tensor-type {shlex.quote(f'{p}={t}')}" for p, t in plan.rules]
    shown = imatrix.replace('"$here/', '"').strip('"') if imatrix else None  # beside it
    equivalent = " ".join(["llama-quantize", *_options(plan, shown), *overrides,
                           "IN.gguf OUT.gguf"])
    lines = _header(plan, "quantize-mainline.sh") + ["# Equivalent command line without the file:"]
    lines += _comment([f"{equivalent} {plan.ftype}"])
    cmd = " ".join([_RUN, *_options(plan, imatrix), '--tensor-type-file "$here/tensor-types.txt"',
                    _TAIL.format(ftype=plan.ftype)])
    return "\n".join([*lines, *_PREAMBLE, cmd]) + "\n"


def render_ik_script(plan: ExportPlan, out_dir: Path | None = None) -> str:
    imatrix = _imatrix_arg(plan, out_dir) if plan.imatrix else None
    joined = ",".join(f"{p}={t}" for p, t in plan.rules)
    cmd = " ".join([_RUN, *_options(plan, imatrix), "--custom-q", shlex.quote(joined),
                    _TAIL.format(ftype=plan.ftype)])
    return "\n".join([*_header(plan, "quantize-ik.sh"), *_PREAMBLE, cmd]) + "\n"


def write_plan(plan: ExportPlan, out_dir: str | Path) -> list[Path]:
    """Write the rules file and the script for ``plan.target`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rules_name, script_name = _FILES[plan.target]
    render = render_tensor_types if plan.target == "mainline" else render_custom_q
    script = render_mainline_script if plan.target == "mainline" else render_ik_script
    rules_path, script_path = out / rules_name, out / script_name
    rules_path.write_text(render(plan.rules))
    script_path.write_text(script(plan, out))
    script_path.chmod(0o755)
    return [rules_path, script_path]


def write_export(recipe_tensors: Mapping[str, str], shapes: Shapes | Iterable, target: str,
                 fmt: str, out_dir: str | Path, imatrix: str | Path | None = None,
                 input_quantized: bool = False) -> tuple[list[Path], list[str]]:
    """Export a recipe planned for ``target`` as ``fmt`` ("mainline" | "ik") into ``out_dir``.
    Another project than the recipe's is accepted only where it writes the very same types."""
    if fmt not in _FILES:
        raise UserError(f"unknown export format '{fmt}': use mainline, ik or json")
    plan = plan_export(recipe_tensors, shapes, fmt, imatrix, input_quantized)
    if fmt != target:
        _check_same_types(recipe_tensors, dict(shapes), target, fmt)
    return write_plan(plan, out_dir), plan.notes


def _check_same_types(tensors: Mapping[str, str], shapes: Shapes, target: str, fmt: str) -> None:
    for name, planned in tensors.items():
        written = resolve(type_in_target(planned, fmt).name, shapes[name], fmt)
        if written != planned:
            raise UserError(f"the recipe was planned for {target}: {name} ({planned}) would become "
                            f"{written} in {fmt}; plan again with --target {fmt}")
