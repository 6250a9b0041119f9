"""The user's llama.cpp binaries: where they are, which project built them, and
llama-perplexity's printed figures.

    find_tool(name, llama_bin)  -> Path   --llama-bin DIR, else $LLAMA_BIN, else PATH
    project_of(tool)            -> "mainline" | "ik"   (ik's tools know ik-only options)
    parse_kld(text)             -> figures of ``llama-perplexity --kl-divergence`` (our keys:
                                   kld_mean, kld_err, kld_p99, ..., same_top_p in [0, 1])
    run_tool(cmd, log)          -> its output; a one-line error when it fails or is killed
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from quant import UserError

_NUM = r"([-+0-9.eE]+|nan|inf)"
_PM = rf"{_NUM}\s*±\s*{_NUM}"
KLD_FIELDS = {  # key -> pattern of its value (group 1) and, where printed, its ± (group 2)
    "ppl": rf"Mean PPL\(Q\)\s*:\s*{_PM}", "ppl_base": rf"Mean PPL\(base\)\s*:\s*{_PM}",
    "ln_ppl_ratio": rf"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*{_PM}",
    "kld_mean": rf"Mean\s+KLD:\s*{_PM}", "kld_max": rf"Maximum KLD:\s*{_NUM}",
    "kld_p999": rf"99\.9%\s+KLD:\s*{_NUM}", "kld_p99": rf"99\.0%\s+KLD:\s*{_NUM}",
    "kld_p95": rf"95\.0%\s+KLD:\s*{_NUM}", "kld_p90": rf"90\.0%\s+KLD:\s*{_NUM}",
    "kld_median": rf"Median\s+KLD:\s*{_NUM}", "rms_dp": rf"RMS Δp\s*:\s*{_PM}\s*%",
    "same_top_p": rf"Same top p:\s*{_PM}\s*%",
}
_ERR = {"ppl": "ppl_err", "ppl_base": "ppl_base_err", "ln_ppl_ratio": "ln_ppl_ratio_err",
        "kld_mean": "kld_err", "rms_dp": "rms_dp_err", "same_top_p": "same_top_p_err"}
_PERCENT = ("rms_dp", "same_top_p")
_IK_ONLY = ("--fused-moe", "-fmoe", "--run-time-repack", "-rtr")


class ToolError(UserError):
    pass


def find_tool(name: str, llama_bin: str | Path | None = None) -> Path:
    for folder in (llama_bin, os.environ.get("LLAMA_BIN")):
        if folder:
            path = Path(folder) / name
            if path.is_file() and os.access(path, os.X_OK):
                return path
            raise ToolError(f"no executable {name} in {folder}: give the folder of your llama.cpp "
                            "build's binaries (--llama-bin or LLAMA_BIN)")
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"{name} not found: give --llama-bin DIR (or LLAMA_BIN) with your "
                        "llama.cpp or ik_llama.cpp binaries")
    return Path(found)


def project_of(tool: Path) -> str:
    """ik_llama.cpp's tools list options mainline has not (fused MoE, run-time repacking)."""
    text = run_tool([str(tool), "--help"], timeout=60, check=False)
    return "ik" if any(k in text for k in _IK_ONLY) else "mainline"


def run_tool(cmd: list[str], log: Path | None = None, timeout: float | None = None,
             check: bool = True) -> str:
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(
        p for p in (str(Path(cmd[0]).parent), os.environ.get("LD_LIBRARY_PATH", "")) if p)}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{Path(cmd[0]).name} took over {timeout:.0f} s: see its options") \
            from None
    text = p.stdout + p.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
    if check and p.returncode != 0:
        how = (f"was killed by signal {signal.Signals(-p.returncode).name}" if p.returncode < 0
               else f"exited with status {p.returncode}")
        where = f" (log: {log})" if log else ""
        raise ToolError(f"{Path(cmd[0]).name} {how}{where}: {_last_line(text)}")
    return text


def _last_line(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1][:200] if lines else "no output"


def parse_kld(text: str) -> dict[str, float]:
    if "Perplexity statistics" not in text:
        raise ToolError("llama-perplexity printed no statistics (it needs at least 100 scored "
                        "tokens, and a --kl-divergence run): give more --chunks")
    out: dict[str, float] = {}
    for key, pattern in KLD_FIELDS.items():
        m = re.search(pattern, text)
        if m is None:
            raise ToolError(f"llama-perplexity printed no '{key}' figure: is this a "
                            "--kl-divergence run?")
        scale = 0.01 if key in _PERCENT else 1.0
        out[key] = float(m.group(1)) * scale
        if key in _ERR:
            out[_ERR[key]] = float(m.group(2)) * scale
    m = re.search(r"computing over (\d+) chunks, n_ctx=(\d+)", text)
    if m:
        n, ctx = int(m.group(1)), int(m.group(2))
        out.update(n_chunks=n, ctx=ctx, n_tokens=n * (ctx - 1 - ctx // 2))
    return out
