"""``search plan`` and every run's header: what a study will cost on this machine before any
work: disk, host memory, and the time of each stage, from rates measured in seconds on the
model's real shapes (cached per machine in the measurement folder, ``rates.json``).

    rates(spec)              -> Rates       quantize/dequantize weights per second per type,
                                            forward seconds per layer and head, compile costs
    estimate(spec, rates)    -> Estimate    bytes, peak memory, seconds per stage
    check_fits(estimate)                    a one-line error when disk or memory cannot hold it

Stage times (N chunks of ctx tokens, B chunks a batch, L layers of layer_s each, head_s):
    forward(N)       ceil(N/B) * (sum of layer_s over the layers + head_s)
    imatrix pass     forward(imatrix chunks)
    base statistics  forward(calibration chunks); held-out base statistics forward(held-out
                     chunks), once for all budgets
    quantization     sum over (tensor, written type) of its slices' time, plus its error
                     and importance (a dequantization and a pass over the weights), plus one
                     compile per (type, row length).  A tensor of k slices of S rows (an
                     expert's rows are sliced on their own) runs as the quantizers do: the
                     first slice alone, then the rest W at a time on W workers:
                     slice_s * (1 + ceil((k - 1) / W) * wave), slice_s = S * ne0 / rate(type),
                     wave = the measured time of W slices at once over one slice's
    trial            dequantization of every quantizable weight + forward(--chunks)
    probes           (roles + 1) trials; trials --trials x trial; final pick 5 x
                     forward(--select-chunks); held-out comparison ~(warm starts + 3) x
                     forward(--eval-chunks)
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import quant
from quant import UserError, slice_rows, workers

from objectives import (cache_quantize_bytes, forward_costs, head_work_bytes, tool_version,
                        trial_weights_bytes)

from .._json import write_json
from .._llamacpp import tensor_options
from ._measure import done_stages
from ._prepare import Spec

BASE_MEMORY = 5 << 28  # Python, JAX and its compiled programs, the model's metadata (1.25 GiB)
SELECT_TOP, MORE_ROWS = 5, 3  # final pick; held-out rows beyond the warm starts
WARM_STARTS = 6  # about how many a study enqueues


@dataclass(frozen=True)
class Rates:
    quantize: dict[str, float]  # type -> weights per second
    dequantize: dict[str, float]
    quant_compile_s: dict[str, float]  # type -> first-call overhead of a new (type, row length)
    quant_wave: dict[str, float]  # type -> seconds of `workers` slices at once / of one slice
    layer_s: dict[str, float]  # layer kind -> seconds per batch
    kinds: tuple[str, ...]
    head_s: float
    forward_compile_s: float
    batch: int
    ctx: int


@dataclass(frozen=True)
class Estimate:
    disk_bytes: int
    host_bytes: int
    stages: dict[str, float]  # seconds
    trial_s: float
    done: frozenset[str] = frozenset()  # stages the measurement folder already holds

    @property
    def total_s(self) -> float:
        """Seconds of the stages still to run."""
        return sum(v for k, v in self.stages.items() if k not in self.done)


def _machine_key(spec: Spec) -> str:
    import jax

    return json.dumps(["rates/2", platform.node(), workers(_platform()), jax.default_backend(),
                       tool_version(), spec.settings.model, spec.opts.ctx, list(spec.types)])


def _platform() -> str:
    import jax

    return jax.devices()[0].platform


def _sample(spec: Spec, type_: str) -> tuple[np.ndarray, int] | None:
    """Real rows of the largest tensor that takes ``type_`` as it is, and its slice size S:
    W + 3 slices where the tensor has them (one to compile, one alone, W + 1 on the workers)."""
    fits = [t for t in spec.model.quantizable(spec.opts.target)
            if type_ in tensor_options(t, spec.opts.target, [type_])]
    if not fits:
        return None
    t = max(fits, key=lambda t: t.n_elements)
    ne0 = t.shape[-1]
    s = slice_rows(t.n_elements // ne0, ne0, _platform())
    n = min(t.n_elements // ne0, (workers(_platform()) + 3) * s)
    return spec.model.f32_rows(t.name, 0, n), s  # only those rows are read


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _type_rates(spec: Spec) -> tuple[dict, dict, dict, dict]:
    """Per written type: quantize (one slice alone) and dequantize weights per second, the
    first call's extra time (compiling), and the wave factor of W slices on W workers."""
    q_rate, d_rate, compile_s, wave = {}, {}, {}, {}
    tgt = spec.opts.target
    written = sorted({w for t in spec.model.quantizable(tgt)
                      for w in tensor_options(t, tgt, list(spec.types))})
    for ty in written:
        got = _sample(spec, ty)
        if got is None:
            continue
        x, s = got
        w = np.ones(x.shape[1], np.float32)  # the study quantizes with an imatrix
        a, b, c = x[:s], x[s:2 * s] if len(x) >= 2 * s else x[:s], x[2 * s:]
        t0 = time.perf_counter()
        packed = quant.quantize(a, ty, w, tgt)
        t_first = time.perf_counter() - t0
        t_one = _timed(lambda: quant.quantize(b, ty, w, tgt))
        if len(c) > s:  # the first slice alone, then the rest at once
            k = -(-len(c) // s)
            waves = -(-(k - 1) // workers(_platform()))
            wave[ty] = max(1.0, (_timed(lambda: quant.quantize(c, ty, w, tgt)) - t_one)
                           / waves / t_one)
        t_d1 = _timed(lambda: quant.dequantize(packed, ty, a.shape, tgt))
        t_d2 = _timed(lambda: quant.dequantize(packed, ty, a.shape, tgt))
        q_rate[ty], d_rate[ty] = b.size / t_one, a.size / t_d2
        compile_s[ty] = max(0.0, t_first - t_one) + max(0.0, t_d1 - t_d2)
    return q_rate, d_rate, compile_s, wave


def rates(spec: Spec, batch: int = 4) -> Rates:
    """Measured now, or read from the machine's cache (same host, backend, model and types)."""
    path = spec.measure_dir / "rates.json"
    key = _machine_key(spec)
    known = json.loads(path.read_text()) if path.is_file() else {}
    if key in known:
        r = known[key]
        return Rates(**{**r, "kinds": tuple(r["kinds"])})
    q, d, c, wave = _type_rates(spec)
    f = forward_costs(spec.model, spec.opts.ctx, batch)
    r = Rates(q, d, c, wave, f.layer_s, f.kinds, f.head_s, f.compile_s, batch, spec.opts.ctx)
    write_json(path, {**known, key: asdict(r)})
    return r


def _forward(r: Rates, n_chunks: int) -> float:
    per_batch = sum(r.layer_s[k] for k in r.kinds) + r.head_s
    return math.ceil(n_chunks / r.batch) * per_batch


def _entries(spec: Spec) -> list[tuple[tuple[int, ...], str]]:
    """(shape, written type) of every (tensor, type) the measurement quantizes; a tensor's own
    stored type is copied, not quantized."""
    out = []
    for t in spec.model.quantizable(spec.opts.target):
        for w in tensor_options(t, spec.opts.target, list(spec.types)):
            if w != t.qtype.name:
                out.append((tuple(t.shape), w))
    return out


def quantize_seconds(shape: tuple[int, ...], rate: float, wave: float, n_workers: int,
                     platform: str = "cpu") -> float:
    """Seconds to quantize a tensor of ``shape`` (3-D: experts, each sliced on its own) at
    ``rate`` weights per second of one slice alone, as the quantizers' slices run."""
    ne0 = shape[-1]
    groups = shape[0] if len(shape) == 3 else 1
    rows = math.prod(shape[:-1]) // groups
    s = slice_rows(rows, ne0, platform)
    k = -(-rows // s)
    return groups * s * ne0 / rate * (1 + -(-(k - 1) // n_workers) * wave)


def estimate(spec: Spec, r: Rates) -> Estimate:
    o, m = spec.opts, spec.model
    entries = _entries(spec)
    slow = min(r.quantize.values()) if r.quantize else 1e6
    n_workers, plat = workers(_platform()), _platform()
    q_time = sum(quantize_seconds(sh, r.quantize.get(w, slow), r.quant_wave.get(w, 1.0),
                                  n_workers, plat)
                 + math.prod(sh) / r.dequantize.get(w, slow) * 2 for sh, w in entries)
    q_time += sum(r.quant_compile_s.get(w, 0.0) for w, _ in {(w, sh[-1]) for sh, w in entries})
    n_q = sum(t.n_elements for t in m.quantizable(o.target))
    dequant = n_q / (sorted(r.dequantize.values())[len(r.dequantize) // 2]
                     if r.dequantize else 1e8)
    trial = dequant + _forward(r, o.chunks)
    roles = len({t.role for t in m.quantizable(o.target)})
    n_trials = o.trials or 60
    stages = {"imatrix pass": _forward(r, o.imatrix_chunks) + r.forward_compile_s,
              "base statistics": _forward(r, spec.calib_chunks),
              "quantization cache": q_time, "calibration probes": (roles + 1) * trial}
    for i, p in enumerate(spec.plans):
        name = p.opts.budget
        stages[f"trials ({name})"] = n_trials * trial
        if i == 0:  # once, after the first study's trials; the budgets share it
            stages["held-out base statistics"] = _forward(r, o.eval_chunks)
        if o.select_chunks >= 2:  # the best few trials, at most all of them
            stages[f"final pick ({name})"] = min(SELECT_TOP, n_trials) * (
                dequant + _forward(r, o.select_chunks))
        stages[f"held-out comparison ({name})"] = (min(WARM_STARTS, n_trials) + MORE_ROWS) * (
            dequant + _forward(r, o.eval_chunks))  # warm starts run first: fewer trials, fewer
    d = m.hparams().n_embd
    scored = ctx_scored(o.ctx)
    hidden = (spec.calib_chunks * o.ctx + (spec.calib_chunks + o.eval_chunks) * scored) * d * 4
    names = {t.name: t for t in m.quantizable(o.target)}
    cache = max((cache_quantize_bytes(m, n, quant.tensor_nbytes(w, t.shape))
                 for n, t in names.items()
                 for w in tensor_options(t, o.target, list(spec.types))), default=0)
    forward = head_work_bytes() + hidden + trial_weights_bytes(m)
    host = BASE_MEMORY + max(forward, cache)
    done = done_stages(spec)
    disk = hidden if "quantization cache" in done else hidden + sum(
        quant.tensor_nbytes(w, (math.prod(sh) // sh[-1], sh[-1])) for sh, w in entries)
    return Estimate(int(disk), int(host), stages, trial, done)


def ctx_scored(ctx: int) -> int:
    return ctx - 1 - ctx // 2


def check_fits(spec: Spec, e: Estimate) -> None:
    """Refuse a study whose disk or memory cannot fit, before it starts."""
    folder = spec.measure_dir
    probe = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    done = _done_bytes(folder)
    if e.disk_bytes - done > free:
        raise UserError(f"the measurement needs {human_bytes(e.disk_bytes - done)} of disk under "
                        f"{probe}, {human_bytes(free)} are free: free space or give "
                        "--measure-dir on a larger disk")
    avail = _available_memory()
    if avail is not None and e.host_bytes > avail:
        raise UserError(f"the study needs about {human_bytes(e.host_bytes)} of memory, "
                        f"{human_bytes(avail)} are available: use fewer --chunks / "
                        "--select-chunks / --eval-chunks, a smaller --ctx, or a larger machine")


def _done_bytes(folder: Path) -> int:
    q = folder / "quant"
    return sum(f.stat().st_size for f in q.rglob("*.npy")) if q.is_dir() else 0


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def human_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def summary_lines(spec: Spec, e: Estimate) -> list[str]:
    lines = [f"estimate {human_seconds(e.total_s)} in all ({human_seconds(e.trial_s)} a trial), "
             f"{human_bytes(e.host_bytes)} of memory at most, {human_bytes(e.disk_bytes)} of "
             f"disk (measurement)"]
    lines += [f"           {k:32} " + ("done (in the measurement folder)" if k in e.done
                                           else human_seconds(v)) for k, v in e.stages.items()]
    return lines

