"""Scale searches shared by the k-quants and the legacy imatrix paths (spec section 2.1), in JAX.

Every function works on a batch of independent groups: the last axis is the group (n values), all
leading axes are batch. Codes come back as int32 with the same shape as ``x``.

    make_qx_quants(x, w, nmax, ik=False)         -> scale, L in [0, 2*nmax-1]     MQX, ik-MQX
    make_q3_quants(x, nmax)                       -> scale, L in [0, 2*nmax-1]     MQ3 (w = x^2)
    make_qkx_quants(x, w, nmax, rmin, rdelta, nstep, use_mad, guard)
                                                  -> scale, the_min, L in [0, nmax]   MQKX (f32)
    make_qkx3_ik(x, w, nmax, rmin, rdelta, nstep) -> scale, the_min, L in [0, nmax]   ik-MQKX (f64)
    make_qp_quants(x, w, nmax, ik=False)          -> scale, L in [0, nmax]         MQP (x >= 0)

(x, w f32 [..., n]; scale, the_min f32 [...]; L int32 [..., n].)

MQX model: x ~ scale * (L - nmax); MQKX model: x ~ scale * L - the_min; MQP model: x ~ scale * L.

Bit-exactness (spec 2.23): sums are sequential in element order (``seq_sum``); constants such as
``nmax + 0.1f*is`` are precomputed in float32 numpy in C's order. XLA's CPU backend fuses
``a*b + c`` into an FMA on FMA hardware (LLVM contraction is always on there), so every product
whose result feeds an addition goes through ``_mul``/``_nf``, which hide it behind a select that
LLVM cannot see through (exact even without quant's ``--xla_cpu_max_isa=AVX`` cap). XLA also
rewrites ``1/(c/a)`` and ``a/const`` into multiplications: every quotient goes through ``_div`` /
``_cdiv``. ik-MQKX accumulates in float64 (``jax.enable_x64`` locally, so the caller need not
enable x64); its float64 products go through the same barrier. Data-dependent loops run as fixed
``fori_loop``s (a pass without changes is a fixed point, so extra passes are no-ops) or as
``while_loop``s over the whole batch with a per-group ``done`` mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._primitives import argmax_abs, nearest

GROUP_MAX_EPS = np.float32(1e-15)
_F32 = jnp.float32


def _nf(p):
    """``p`` unchanged, but opaque to FMA contraction (and to NaN: NaN becomes 0)."""
    return jnp.where(p == p, p, jnp.zeros_like(p))


def _mul(a, b):
    """a*b rounded on its own (never fused into a following add)."""
    return _nf(a * b)


def _div(a, b):
    """a/b, kept out of XLA's division rewrites (1/(c/a) -> a*(1/c) and the like)."""
    return _nf(_nf(a) / b)


def _cdiv(a, c):
    """a/c for a constant c: XLA would turn it into a*(1/c), so the divisor is made opaque."""
    a = jnp.asarray(a)
    return _nf(a / jnp.where(a == a, jnp.asarray(c, a.dtype), jnp.asarray(c + 1, a.dtype)))


def _near(v):
    """ggml nearest_int of ``v`` as an already-rounded float (no fused multiply-add)."""
    return nearest(_nf(v))


def _inputs(*arrays):
    """float32 copies of the inputs, each cut off from any product the caller computed it with."""
    return tuple(_nf(jnp.asarray(a, _F32)) for a in arrays)


def _seq(a):
    """Left-to-right sum over the last axis, in ``a``'s dtype."""
    acc = a[..., 0]
    for i in range(1, a.shape[-1]):
        acc = acc + a[..., i]
    return acc


def _take(a, j):
    """a[..., j[...]] for a per-group index ``j``."""
    return jnp.take_along_axis(a, j[..., None], axis=-1)[..., 0]


def _first_argmax(a):
    """Index of the first maximum along the last axis, int32 (no jnp.argmax: its cached lowering
    breaks under a local ``enable_x64``)."""
    n = a.shape[-1]
    hit = a == jnp.max(a, axis=-1, keepdims=True)
    return jnp.min(jnp.where(hit, jnp.arange(n, dtype=jnp.int32), jnp.int32(n)), axis=-1)


def _onehot(j, n):
    return jnp.arange(n) == j[..., None]


# ----------------------------------------------------------------------------------------------
# MQX: make_qx_quants (mainline) and its ik version with two candidate families and greedy steps
# ----------------------------------------------------------------------------------------------


def _qx_numerators(nmax: int, ik: bool) -> np.ndarray:
    """Candidate iscale numerators in C's evaluation order (divided by max at run time)."""
    out = []
    for i in range(-9, 10):
        step = np.float32(np.float32(0.1) * np.float32(i))
        if i != 0 or ik:
            out.append(-(np.float32(nmax) + step))
        if ik:
            out.append(np.float32(nmax - 1) + step)
    return np.asarray(out, np.float32)


def _qx_stats(x, wx, w, iscale, nmax):
    l = jnp.clip(_near(iscale[..., None] * x), -nmax, nmax - 1)
    lf = l.astype(_F32)
    return l, _seq(_mul(wx, lf)), _seq(_mul(_mul(w, lf), lf))


def make_qx_quants(x, w, nmax: int, ik: bool = False):
    """MQX (spec 2.1.1, rmse_type 1) or ik-MQX (2.1.5) over groups on the last axis.

    x, w: f32 [..., n] (w: per-element weights, e.g. x*x or the imatrix-derived ones).
    Returns (scale f32 [...], L int32 [..., n] in [0, 2*nmax-1]) with x ~ scale*(L - nmax);
    all-zero groups (max|x| < 1e-15) give scale 0 and L 0.
    """
    x, w = _inputs(x, w)
    mx = argmax_abs(x)
    zero = jnp.abs(mx) < GROUP_MAX_EPS
    mx = jnp.where(zero, _F32(1), mx)
    wx = _mul(w, x)
    l, sumlx, suml2 = _qx_stats(x, wx, w, _div(_F32(-nmax), mx), nmax)
    scale = jnp.where(suml2 != 0, _div(sumlx, jnp.where(suml2 != 0, suml2, 1)), 0)
    state = (l, scale, scale * sumlx, sumlx, suml2)
    nums = jnp.asarray(_qx_numerators(nmax, ik))

    def body(i, st):
        l0, sc0, best, bx, b2 = st
        l1, slx, sl2 = _qx_stats(x, wx, w, _div(nums[i], mx), nmax)
        acc = (sl2 > 0) & (slx * slx > best * sl2)
        sc1 = jnp.where(acc, _div(slx, jnp.where(acc, sl2, 1)), sc0)
        return (jnp.where(acc[..., None], l1, l0), sc1, jnp.where(acc, sc1 * slx, best),
                jnp.where(acc, slx, bx), jnp.where(acc, sl2, b2))

    l, scale, best, sumlx, suml2 = lax.fori_loop(0, len(nums), body, state)
    if ik:
        l, scale = _qx_greedy(x, w, l, scale, best, sumlx, suml2, nmax, zero)
    scale = jnp.where(zero, _F32(0), scale)
    return scale, jnp.where(zero[..., None], 0, l + nmax)


def _qx_greedy(x, w, l, scale, best, sumlx, suml2, nmax, done):
    """ik-MQX greedy refinement: move one code by +-1 along the largest weighted gradient."""
    n = x.shape[-1]

    def step(s):
        l, scale, best, sumlx, suml2 = s["l"], s["scale"], s["best"], s["sumlx"], s["suml2"]
        x, w = s["x"], s["w"]
        g = _mul(_mul(scale[..., None], w), x - _mul(scale[..., None], l.astype(_F32)))
        ok = ((g > 0) & (l < nmax - 1)) | ((g < 0) & (l > -nmax))
        ag = jnp.where(ok, jnp.abs(g), 0)
        j = _first_argmax(ag)
        up = _take(g, j) > 0
        wj, lj = _take(w, j), _take(l, j)
        wxj = _mul(wj, _take(x, j))
        nslx = jnp.where(up, sumlx + wxj, sumlx - wxj)
        stp = jnp.where(up, 2 * lj + 1, 2 * lj - 1).astype(_F32)
        nsl2 = jnp.where(up, suml2 + _mul(wj, stp), suml2 - _mul(wj, stp))
        acc = ~s["done"] & (_take(ag, j) > 0) & (nsl2 > 0) & (nslx * nslx > best * nsl2)
        nsc = _div(nslx, jnp.where(acc, nsl2, 1))
        dl = jnp.where(up, 1, -1)
        return dict(s, l=jnp.where(_onehot(j, n) & acc[..., None], l + dl[..., None], l),
                    scale=jnp.where(acc, nsc, scale), best=jnp.where(acc, nsc * nslx, best),
                    sumlx=jnp.where(acc, nslx, sumlx), suml2=jnp.where(acc, nsl2, suml2),
                    done=s["done"] | ~acc)

    st = dict(x=x, w=w, l=l, scale=scale, best=best, sumlx=sumlx, suml2=suml2, done=done)
    st = _batch_while(step, st, n * (2 * nmax - 1))
    return st["l"], st["scale"]


def _batch_while(step, st, max_iter: int):
    """Apply ``step`` to the dict ``st`` of per-group arrays (all with the batch shape of the bool
    ``st["done"]`` in front) until every group is done or ``max_iter`` steps ran.

    ``step`` must leave done groups unchanged. Once at most 1/64 of the groups still run, those
    are gathered into a batch of that size, so a few long runs (up to ``max_iter``) do not keep
    the whole batch busy; every group still sees exactly the steps it would see alone.
    """
    lead = st["done"].shape
    flat = {k: v.reshape((-1,) + v.shape[len(lead):]) for k, v in st.items()}
    cap = flat["done"].shape[0] // 64
    flat, _ = _stage(step, flat, jnp.int32(0), max_iter, [cap] if cap >= 8 else [])
    return {k: v.reshape(lead + v.shape[1:]) for k, v in flat.items()}


def _stage(step, st, it, max_iter, caps):
    stop = caps[0] if caps else 0

    def cond(c):
        return (c[0] < max_iter) & (jnp.sum(~c[1]["done"]) > stop)

    it, st = lax.while_loop(cond, lambda c: (c[0] + 1, step(c[1])), (it, st))
    if not caps:
        return st, it
    idx = jnp.argsort(st["done"].astype(jnp.int32), stable=True)[: caps[0]]
    sub, it = _stage(step, {k: v[idx] for k, v in st.items()}, it, max_iter, caps[1:])
    return {k: v.at[idx].set(sub[k]) for k, v in st.items()}, it


# ----------------------------------------------------------------------------------------------
# MQ3: make_q3_quants(do_rmse=true), coordinate descent with weights x^2
# ----------------------------------------------------------------------------------------------


def _refine(x, w, wx, l, sumlx, suml2, clip, guard_before: bool):
    """The refinement of make_q3_quants and make_qp_quants: 5 passes over the n columns, each
    re-solving l_j = clip(round(x_j * S2 / SX)) from the others' sums (SX = sum w x l,
    S2 = sum w l^2, both without j) and keeping it if SX^2 / S2 grows. The guard on S2 > 0 is on
    the sums without j (qp) or with the new l_j (q3).

    x, w, wx f32 [..., n]; l int32 [..., n]; sumlx, suml2 f32 [...]. Returns (l, sumlx, suml2).
    """
    n = x.shape[-1]

    def body(k, st):
        l, sumlx, suml2 = st
        j = jnp.full(x.shape[:-1], k % n)
        li = _take(l, j)
        lj = li.astype(_F32)
        wj, xj, wxj = _take(w, j), _take(x, j), _take(wx, j)
        slx0 = sumlx - _mul(wxj, lj)
        sl20 = suml2 - _mul(_mul(wj, lj), lj)
        new = clip(_near(_div(_mul(xj, sl20), jnp.where(slx0 > 0, slx0, 1))))
        nf = new.astype(_F32)
        slx = slx0 + _mul(wxj, nf)
        sl2 = sl20 + _mul(_mul(wj, nf), nf)
        acc = (slx0 > 0) & (new != li) & ((sl20 if guard_before else sl2) > 0)
        acc = acc & (_mul(slx, slx) * suml2 > _mul(sumlx, sumlx) * sl2)
        l = jnp.where(_onehot(j, n) & acc[..., None], new[..., None], l)
        return l, jnp.where(acc, slx, sumlx), jnp.where(acc, sl2, suml2)

    return lax.fori_loop(0, 5 * n, body, (l, sumlx, suml2))


def make_q3_quants(x, nmax: int):
    """MQ3 (spec 2.1.2; ik's is the same up to its missing suml2 guard). x f32 [..., n].

    Returns (scale f32 [...], L int32 [..., n] in [0, 2*nmax-1]), x ~ scale*(L - nmax).
    """
    x = _nf(jnp.asarray(x, _F32))
    w = _mul(x, x)
    wx = _mul(w, x)
    mx = argmax_abs(x)
    zero = jnp.abs(mx) < GROUP_MAX_EPS
    l, sumlx, suml2 = _qx_stats(x, wx, w, _div(_F32(-nmax), jnp.where(zero, 1, mx)), nmax)

    l, sumlx, suml2 = _refine(x, w, wx, l, sumlx, suml2, lambda v: jnp.clip(v, -nmax, nmax - 1),
                              guard_before=False)
    scale = jnp.where(suml2 > 0, _div(sumlx, jnp.where(suml2 > 0, suml2, 1)), 0)
    return jnp.where(zero, _F32(0), scale), jnp.where(zero[..., None], 0, l + nmax)


# ----------------------------------------------------------------------------------------------
# MQKX: make_qkx2_quants / make_qkx3_quants (float32)
# ----------------------------------------------------------------------------------------------


def _qkx_numerators(nmax: int, rmin: float, rdelta: float, nstep: int) -> np.ndarray:
    f = np.float32
    out = [(f(rmin) + f(f(rdelta) * f(i))) + f(nmax) for i in range(nstep + 1)]
    return np.asarray(out, np.float32)


def _qkx_err(x, w, s, m, lf, use_mad):
    diff = (_mul(s[..., None], lf) + m[..., None]) - x
    e = jnp.abs(diff) if use_mad else diff * diff
    return _seq(_mul(w, e))


def _degenerate(mx, mn, guard: str):
    if guard == "eq":
        return mx == mn
    if guard == "le":
        return mx <= mn
    return (mx - mn) < np.float32(1e-10)


def make_qkx_quants(x, w, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool,
                    guard: str = "eq"):
    """MQKX (spec 2.1.3) in float32 over groups on the last axis.

    x, w: f32 [..., n]. ``guard``: "eq" (mainline qkx2: max == min), "le" (mainline qkx3:
    max <= min), "ik" (ik qkx2: max - min < 1e-10). Returns (scale f32 [...], the_min f32 [...]
    (>= 0, the positive offset), L int32 [..., n] in [0, nmax]) with x ~ scale*L - the_min.
    """
    x, w = _inputs(x, w)
    mn = jnp.minimum(jnp.min(x, axis=-1), 0)
    mx = jnp.max(x, axis=-1)
    sum_w, sum_x = _seq(w), _seq(_mul(w, x))
    degen = _degenerate(mx, mn, guard)
    iscale = _div(_F32(nmax), jnp.where(degen, 1, mx - mn))
    scale = _div(_F32(1), iscale)
    l = jnp.clip(_near(iscale[..., None] * (x - mn[..., None])), 0, nmax)
    best = _qkx_err(x, w, scale, mn, l.astype(_F32), use_mad)
    nums = jnp.asarray(_qkx_numerators(nmax, rmin, rdelta, nstep))

    def body(i, st):
        l0, s0, m0, best = st
        isc = _div(nums[i], jnp.where(degen, 1, mx - m0))
        l1 = jnp.clip(_near(isc[..., None] * (x - m0[..., None])), 0, nmax)
        lf = l1.astype(_F32)
        wl = _mul(w, lf)
        s_l, s_l2, s_xl = _seq(wl), _seq(_mul(wl, lf)), _seq(_mul(wl, x))
        d = _mul(sum_w, s_l2) - _mul(s_l, s_l)
        dd = jnp.where(d > 0, d, 1)
        ts = _div(_mul(sum_w, s_xl) - _mul(sum_x, s_l), dd)
        tm = _div(_mul(s_l2, sum_x) - _mul(s_l, s_xl), dd)
        pos = tm > 0
        ts = jnp.where(pos, _div(s_xl, jnp.where(pos, s_l2, 1)), ts)
        tm = jnp.where(pos, _F32(0), tm)
        err = _qkx_err(x, w, ts, tm, lf, use_mad)
        acc = (d > 0) & (err < best)
        return (jnp.where(acc[..., None], l1, l0), jnp.where(acc, ts, s0), jnp.where(acc, tm, m0),
                jnp.where(acc, err, best))

    l, scale, mn2, _ = lax.fori_loop(0, nstep + 1, body, (l, scale, mn, best))
    return (jnp.where(degen, _F32(0), scale), jnp.where(degen, -mn, -mn2),
            jnp.where(degen[..., None], 0, l))


# ----------------------------------------------------------------------------------------------
# ik-MQKX: ik make_qkx3_quants, float64 accumulators and a greedy phase (use_mad = false)
# ----------------------------------------------------------------------------------------------


def _d(a):
    return jnp.asarray(a).astype(jnp.float64)


def _score(s, m, sxl, sx, sl, sl2, sw):
    """2 s sxl + 2 m sx - 2 s m sl - s^2 sl2 - m^2 sw, left to right, float64."""
    t = _mul(2 * s, sxl) + _mul(2 * m, sx)
    t = t - _mul(_mul(2 * s, m), sl)
    return (t - _mul(_mul(s, s), sl2)) - _mul(_mul(m, m), sw)


def _solve(sw, sx, sl, sl2, sxl):
    """Normal equations of x ~ s*L + m (m clamped to <= 0). Returns (D, s, m), float64."""
    d = _mul(sw, sl2) - _mul(sl, sl)
    dd = jnp.where(d > 0, d, 1)
    ts = _div(_mul(sw, sxl) - _mul(sx, sl), dd)
    tm = _div(_mul(sl2, sx) - _mul(sl, sxl), dd)
    pos = tm > 0
    ts = jnp.where(pos, _div(sxl, jnp.where(pos, sl2, 1)), ts)
    return d, ts, jnp.where(pos, 0.0, tm)


def make_qkx3_ik(x, w, nmax: int, rmin: float, rdelta: float, nstep: int):
    """ik-MQKX (spec 2.1.5, use_mad = false) over groups on the last axis; float64 sums.

    x, w: f32 [..., n]. Returns (scale f32 [...], the_min f32 [...], L int32 [..., n] in
    [0, nmax]).
    """
    x, w = _inputs(x, w)
    with jax.enable_x64(True):
        return _qkx3_ik(x, w, nmax, rmin, rdelta, nstep)


def _qkx3_ik(x, w, nmax, rmin, rdelta, nstep):
    xd, wd = _d(x), _d(w)
    mn = jnp.minimum(jnp.min(x, axis=-1), 0)
    mx = jnp.max(x, axis=-1)
    wxd = _mul(wd, xd)
    sw, sx, sx2 = _seq(wd), _seq(wxd), _seq(_mul(wxd, xd))
    degen = _degenerate(mx, mn, "ik")
    iscale = _div(_F32(nmax), jnp.where(degen, 1, mx - mn))
    scale = _div(_F32(1), iscale)
    l = jnp.clip(_near(iscale[..., None] * (x - mn[..., None])), 0, nmax)
    diff = (_mul(_d(scale)[..., None], _d(l)) + _d(mn)[..., None]) - xd
    best = _seq(_mul(wd, diff * diff))
    nums = jnp.asarray(_qkx_numerators(nmax, rmin, rdelta, nstep))

    def body(i, st):
        l0, s0, m0, best = st
        isc = _div(nums[i], jnp.where(degen, 1, mx - m0))
        l1 = jnp.clip(_near(isc[..., None] * (x - m0[..., None])), 0, nmax)
        sl, sl2, sxl = _lsums(wd, xd, l1)
        d, ts, tm = _solve(sw, sx, sl, sl2, sxl)
        mad = sx2 - _mul(2 * ts, sxl)
        mad = (mad - _mul(2 * tm, sx)) + _mul(_mul(2 * ts, tm), sl)
        mad = (mad + _mul(_mul(ts, ts), sl2)) + _mul(_mul(tm, tm), sw)
        acc = (d > 0) & (mad < best)
        return (jnp.where(acc[..., None], l1, l0), jnp.where(acc, ts.astype(_F32), s0),
                jnp.where(acc, tm.astype(_F32), m0), jnp.where(acc, mad, best))

    l, scale, mn, _ = lax.fori_loop(0, nstep + 1, body, (l, scale, mn, best))
    l, scale, mn = _qkx3_greedy(x, wd, xd, l, scale, mn, (sw, sx), nmax, degen)
    return jnp.where(degen, _F32(0), scale), -mn, jnp.where(degen[..., None], 0, l)


def _lsums(wd, xd, l):
    lf = _d(l)
    wl = _mul(wd, lf)
    return _seq(wl), _seq(_mul(wl, lf)), _seq(_mul(wl, xd))


def _qkx3_greedy(x, wd, xd, l, scale, mn, totals, nmax, done):
    """ik-MQKX greedy phase: move one code by +-1 along the largest unweighted residual."""
    n = x.shape[-1]
    sw, sx = totals
    sl, sl2, sxl = _lsums(wd, xd, l)

    def step(s):
        l, scale, mn, x, wd, xd = s["l"], s["scale"], s["mn"], s["x"], s["wd"], s["xd"]
        g = (x - _mul(scale[..., None], l.astype(_F32))) - mn[..., None]
        ok = ((g > 0) & (l < nmax)) | ((g < 0) & (l > 0))
        ag = jnp.where(ok, jnp.abs(g), 0)
        j = _first_argmax(ag)
        dr = jnp.where(_take(g, j) > 0, 1, -1).astype(l.dtype)
        act = ~s["done"] & (_take(ag, j) > 0) & ~((j == s["last_j"]) & (dr == -s["last_d"]))
        wj, xj, lj = _take(wd, j), _take(xd, j), _take(l, j)
        drd = _d(dr)
        s_l = s["sl"] + _mul(wj, drd)
        s_l2 = s["sl2"] + _mul(wj, _d(2 * lj * dr + 1))
        s_xl = s["sxl"] + _mul(_mul(wj, xj), drd)
        d, ts, tm = _solve(s["sw"], s["sx"], s_l, s_l2, s_xl)
        score = _score(ts, tm, s_xl, s["sx"], s_l, s_l2, s["sw"])
        act = act & (d > 0) & (ts >= 0) & (score > s["best"])

        def upd(new, old):
            return jnp.where(act, new, old)

        return dict(s, l=jnp.where(_onehot(j, n) & act[..., None], l + dr[..., None], l),
                    scale=upd(ts.astype(_F32), scale), mn=upd(tm.astype(_F32), mn),
                    best=upd(score, s["best"]),
                    sl=upd(s_l, s["sl"]), sl2=upd(s_l2, s["sl2"]), sxl=upd(s_xl, s["sxl"]),
                    last_j=upd(j, s["last_j"]), last_d=upd(dr, s["last_d"]), done=s["done"] | ~act)

    st = dict(x=x, wd=wd, xd=xd, l=l, scale=scale, mn=mn, sw=sw, sx=sx, sl=sl, sl2=sl2, sxl=sxl,
              best=_score(_d(scale), _d(mn), sxl, sx, sl, sl2, sw),
              last_j=jnp.full(done.shape, -1, jnp.int32), last_d=jnp.zeros(done.shape, l.dtype),
              done=done)
    st = _batch_while(step, st, nmax * n)
    return st["l"], st["scale"], st["mn"]


# ----------------------------------------------------------------------------------------------
# MQP: make_qp_quants, positive scale for super-block scales / mins
# ----------------------------------------------------------------------------------------------


def _qp_numerators(nmax: int) -> np.ndarray:
    f = np.float32
    return np.asarray([f(f(0.1) * f(i)) + f(nmax) for i in range(-4, 5) if i != 0], np.float32)


def _qp_mse(x, w, scale, l):
    diff = x - _mul(scale[..., None], l.astype(_F32))
    return _seq(_mul(_mul(w, diff), diff))


def make_qp_quants(x, w, nmax: int, ik: bool = False):
    """MQP (spec 2.1.4; ik: zero guard 1e-16 and no suml2 guard) over groups on the last axis.

    x: f32 [..., n] non-negative values (block scales or mins); w: f32 [..., n] weights.
    Returns (scale f32 [...], L int32 [..., n] in [0, nmax]) with x ~ scale*L.
    """
    x, w = _inputs(x, w)
    mx = jnp.maximum(jnp.max(x, axis=-1), 0)
    zero = mx < (np.float32(1e-16) if ik else GROUP_MAX_EPS)
    mx = jnp.where(zero, 1, mx)
    iscale = _div(_F32(nmax), mx)
    best = _qp_mse(x, w, _div(_F32(1), iscale), _near(iscale[..., None] * x))
    nums = jnp.asarray(_qp_numerators(nmax))

    def cand(i, st):
        isc, best = st
        isi = _div(nums[i], mx)
        mse = _qp_mse(x, w, _div(_F32(1), isi), jnp.minimum(nmax, _near(isi[..., None] * x)))
        acc = mse < best
        return jnp.where(acc, isi, isc), jnp.where(acc, mse, best)

    iscale, _ = lax.fori_loop(0, len(nums), cand, (iscale, best))
    l = jnp.minimum(nmax, _near(iscale[..., None] * x))
    wx = _mul(w, x)
    lf = l.astype(_F32)
    sumlx, suml2 = _seq(_mul(wx, lf)), _seq(_mul(_mul(w, lf), lf))

    l, sumlx, suml2 = _refine(x, w, wx, l, sumlx, suml2, lambda v: jnp.minimum(nmax, v),
                              guard_before=True)
    if ik:
        scale = _div(sumlx, suml2)
    else:
        scale = jnp.where(suml2 > 0, _div(sumlx, jnp.where(suml2 > 0, suml2, 1)), 0)
    return jnp.where(zero, _F32(0), scale), jnp.where(zero[..., None], 0, l)


__all__ = ["make_qx_quants", "make_q3_quants", "make_qkx_quants", "make_qkx3_ik", "make_qp_quants"]
