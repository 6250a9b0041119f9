"""iq4_nl (32 weights, 18 bytes) and iq4_xs (256 weights, 136 bytes), spec 2.10, mainline and ik.

    iq4_nl  d:f16 qs[16]                                   y = d * K[code]
    iq4_xs  d:f16 scales_h:u16 scales_l[4] qs[128]         y = d * (ls_b - 32) * K[code], 8 blocks

K = kvalues_iq4nl (16 int8).  Shapes: x f32 [R, ne0] -> super-blocks [R, ns, S] (S = 32 / 256) ->
blocks xb [B, 32] (B = R * ne0 / 32) for the block-scale search:

    block_scales(xb, wb, target) -> s [B]   ntry = 7 LSQ search (ik: two anchors, then greedy)
    weights: imatrix qw * sqrt(sigma2 + x^2), sigma2 = 2 * sum_S(x^2) / S, else x^2.
Codes are then re-derived from the stored (quantized) scale with best(K, x / scale).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from ._legacy import join_fields, nibbles32, split_blocks, unnibbles32
from ._primitives import (
    argmax_abs,
    best_index_value_int8,
    div,
    nearest,
    nl_index_table,
    pack_f16,
    pack_u16,
    seq_sum,
    unpack_f16,
    unpack_u16,
)
from ._registry import register_dequantizer, register_quantizer

KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
IQ4NL_INDEX = nl_index_table(KVALUES_IQ4NL, 241)
GROUP_MAX_EPS = 1e-15
NTRY = 7
_K = np.asarray(KVALUES_IQ4NL, np.float32)


def best_code(x, target: str):
    """Nearest K index of x (mainline best_index_int8; ik best_index_iq4nl gives the same)."""
    return best_code_value(x, target)[0]


def best_code_value(x, target: str):
    """(best_code(x), K[best_code(x)] as f32).  ik's table lookup (spec 2.1.7) can differ from
    the binary search only where ``x - K[k]`` rounds to a coarser float than x, i.e. for |x| below
    the gap to the nearer K value; with K's gaps of 10+ and its integer midpoints at |x| >= 7 that
    never happens (checked equal on every float within 4096 ulps of each integer and midpoint in
    [-130, 118]; tests/test_quant_api.py keeps 256 ulps), so both targets use the faster search."""
    del target
    return best_index_value_int8(KVALUES_IQ4NL, x)


def search_weights(x, w, sbs: int):
    """[R, ne0/32, 32] weights: qw*sqrt(sigma2 + x^2), sigma2 over the super-block; else x^2."""
    R, ne0 = x.shape
    if w is None:
        return (x * x).reshape(R, -1, 32)
    xs = x.reshape(R, -1, sbs)
    sigma2 = seq_sum(xs * xs) * jnp.float32(2.0 / sbs)
    sig = jnp.repeat(sigma2, sbs // 32, axis=-1)[..., None]
    xb = x.reshape(R, -1, 32)
    return w.reshape(1, -1, 32) * jnp.sqrt(sig + xb * xb)


def _sums(q, xb, wb):
    """LSQ sums of candidates with values q: sumqx = sum((w*q)*x), sumq2 = sum((w*q)*q), in order."""
    wq = wb * q
    return seq_sum(wq * xb), seq_sum(wq * q)


def _accept_scan(sqx, sq2, d, best):
    """ggml's LSQ rule over candidates 1..C-1 in order (take c when sumq2 > 0 and
    sumqx^2 > best*sumq2); sqx, sq2 [B, C] -> final (d, best, accepted candidate index) [B]."""

    def step(carry, c):
        d, best, idx = carry
        c_sqx, c_sq2, i = c
        ok = (c_sq2 > 0) & (c_sqx * c_sqx > best * c_sq2)
        c_d = c_sqx / jnp.where(ok, c_sq2, 1.0)
        new = (jnp.where(ok, c_d, d), jnp.where(ok, c_d * c_sqx, best), jnp.where(ok, i, idx))
        return new, None

    n = sqx.shape[-1]
    xs = (jnp.moveaxis(sqx[..., 1:], -1, 0), jnp.moveaxis(sq2[..., 1:], -1, 0), jnp.arange(1, n))
    (d, best, idx), _ = lax.scan(step, (d, best, jnp.zeros(d.shape, jnp.int32)), xs)
    return d, best, idx


def _candidates(ids, xb, wb, target):
    """All candidates at once: ids [B, C] -> (sumqx [B, C], sumq2 [B, C], codes [B, C, 32])."""
    codes, q = best_code_value(ids[..., None] * xb[..., None, :], target)
    return _sums(q, xb[..., None, :], wb[..., None, :]) + (codes,)


def _anchors(target: str):
    """(try, anchor value) pairs in evaluation order."""
    tries = range(-NTRY, NTRY + 1)
    if target == "mainline":
        return [(t, KVALUES_IQ4NL[0]) for t in tries]
    return [(t, a) for t in tries for a in (KVALUES_IQ4NL[0], KVALUES_IQ4NL[15])]


def _lsq_search(xb, wb, mx, target: str):
    """Initial d = max/127 candidate, then the tries; returns (d, best, sumqx, sumq2, codes)."""
    d0 = div(-mx, KVALUES_IQ4NL[0])
    tries = jnp.asarray([float(t + a) for t, a in _anchors(target)], jnp.float32)
    ids = jnp.concatenate([div(1.0, d0)[..., None], div(tries, mx[..., None])], axis=-1)
    sqx, sq2, codes = _candidates(ids, xb, wb, target)
    if target == "mainline":
        pos = sq2[..., 0] > 0
        d = jnp.where(pos, sqx[..., 0] / jnp.where(pos, sq2[..., 0], 1.0), 0.0)
    else:
        d = sqx[..., 0] / sq2[..., 0]
    d, best, idx = _accept_scan(sqx, sq2, d, d * sqx[..., 0])
    pick = idx[..., None]
    codes = jnp.take_along_axis(codes, pick[..., None], -2)[..., 0, :]
    return (d, best, jnp.take_along_axis(sqx, pick, -1)[..., 0],
            jnp.take_along_axis(sq2, pick, -1)[..., 0], codes)


def _greedy_choice(d, codes, xb, wb):
    """ik greedy: (j, dir) of the smallest step over eligible elements, j = -1 when none."""
    k = jnp.asarray(_K)
    v = k[codes]
    g = d[..., None] * wb * (xb - d[..., None] * v)
    up = (g > 0) & (codes < 15)
    down = (g < 0) & (codes > 0)
    step_up = (k[jnp.minimum(codes + 1, 15)] - v) / g
    step_dn = (k[jnp.maximum(codes - 1, 0)] - v) / g
    step = jnp.where(up, step_up, jnp.where(down, step_dn, jnp.inf))
    j = jnp.argmin(step, axis=-1)
    ok = jnp.take_along_axis(step, j[..., None], -1)[..., 0] < jnp.inf
    direction = jnp.where(jnp.take_along_axis(up, j[..., None], -1)[..., 0], 1, -1)
    return jnp.where(ok, j, -1), direction


def _greedy_step(carry, xb, wb):
    d, best, sqx, sq2, codes, active = carry
    j, direction = _greedy_choice(d, codes, xb, wb)
    active = active & (j >= 0)
    jj = jnp.maximum(j, 0)[..., None]
    c = jnp.take_along_axis(codes, jj, -1)[..., 0]
    c_new = jnp.clip(c + direction, 0, 15)
    k = jnp.asarray(_K)
    iq, iq_new = k[c].astype(jnp.int32), k[c_new].astype(jnp.int32)
    wj = jnp.take_along_axis(wb, jj, -1)[..., 0]
    xj = jnp.take_along_axis(xb, jj, -1)[..., 0]
    n_sqx = sqx + (wj * xj) * (iq_new - iq).astype(jnp.float32)
    n_sq2 = sq2 + wj * (iq_new * iq_new - iq * iq).astype(jnp.float32)
    ok = active & (n_sq2 > 0) & (n_sqx * n_sqx > best * n_sq2)
    n_d = n_sqx / jnp.where(ok, n_sq2, 1.0)
    onehot = jnp.arange(32) == jj
    codes = jnp.where(ok[..., None] & onehot, c_new[..., None], codes)
    return (jnp.where(ok, n_d, d), jnp.where(ok, n_d * n_sqx, best), jnp.where(ok, n_sqx, sqx),
            jnp.where(ok, n_sq2, sq2), codes, ok)


def _ik_greedy(state, xb, wb, live):
    """ik's refinement: at most 32*32 single-code moves per block while the LSQ merit improves."""
    d, best, sqx, sq2, codes = state

    def cond(c):
        return (c[0] < 32 * 32) & jnp.any(c[1][-1])

    def body(c):
        return c[0] + 1, _greedy_step(c[1], xb, wb)

    carry = (d, best, sqx, sq2, codes, live)
    _, (d, *_rest) = lax.while_loop(cond, body, (jnp.int32(0), carry))
    return d


def block_scales(xb, wb, target: str):
    """Per-32-block scale s [B] of the ntry = 7 search (0 for blocks with max|x| < 1e-15)."""
    mx = argmax_abs(xb)
    live = jnp.abs(mx) >= GROUP_MAX_EPS
    mx_safe = jnp.where(live, mx, 1.0)
    state = _lsq_search(xb, wb, mx_safe, target)
    d = state[0] if target == "mainline" else _ik_greedy(state, xb, wb, live)
    return jnp.where(live, d, 0.0)


def _inv(d):
    return jnp.where(d != 0, div(1.0, jnp.where(d != 0, d, 1.0)), 0.0)


def _quantize_nl(x, w, target):
    R = x.shape[0]
    xb = x.reshape(R, -1, 32)
    s = block_scales(xb, search_weights(x, w, 32), target)
    codes = best_code(_inv(s)[..., None] * xb, target)
    return join_fields(pack_f16(s), nibbles32(codes))


def _xs_scales(s):
    """Super-block scale D (f32; stored f16) and 6-bit block scales l [R, ns, 8] (stored l+32)."""
    D = div(-argmax_abs(s), 32)
    l = jnp.clip(nearest(_inv(D)[..., None] * s), -32, 31)
    return D, l


def _xs_fields(l):
    """scales_h (u16, 2 bits per block) and scales_l (4 bytes, a nibble per block) of l + 32."""
    u = (l + 32).astype(jnp.uint32)
    h = jnp.sum((u >> 4) << (2 * jnp.arange(8, dtype=jnp.uint32)), axis=-1, dtype=jnp.uint32)
    lo = (u & 0xF).astype(jnp.uint8)
    return pack_u16(h), lo[..., 0::2] | (lo[..., 1::2] << 4)


def _quantize_xs(x, w, target):
    R = x.shape[0]
    xb = x.reshape(R, -1, 32)
    s = block_scales(xb, search_weights(x, w, 256), target).reshape(R, -1, 8)
    D, l = _xs_scales(s)
    dl = D[..., None] * l.astype(jnp.float32)
    codes = best_code(_inv(dl).reshape(R, -1)[..., None] * xb, target).reshape(R, -1, 8, 32)
    sh, sl = _xs_fields(l)
    return join_fields(pack_f16(D), sh, sl, nibbles32(codes).reshape(R, -1, 128))


def _register(target: str):
    register_quantizer("iq4_nl", target)(lambda x, w=None: _quantize_nl(x, w, target))
    register_quantizer("iq4_xs", target)(lambda x, w=None: _quantize_xs(x, w, target))


for _t in ("mainline", "ik"):
    _register(_t)


@register_dequantizer("iq4_nl")
def dequantize_iq4_nl(q, ne0: int):
    b = split_blocks(q, 18)
    d = unpack_f16(b[..., 0:2])
    vals = jnp.asarray(_K)[unnibbles32(b[..., 2:])]
    return (d[..., None] * vals).reshape(q.shape[0], ne0)


def xs_block_scales(b):
    """iq4_xs super-block bytes [..., 136] -> ls - 32 per block, int32 [..., 8]."""
    h = unpack_u16(b[..., 2:4])[..., None] >> (2 * jnp.arange(8, dtype=jnp.uint32))
    sl = b[..., 4:8].astype(jnp.uint32)
    lo = jnp.stack([sl & 0xF, sl >> 4], axis=-1).reshape(sl.shape[:-1] + (8,))
    return (lo | ((h & 3) << 4)).astype(jnp.int32) - 32


@register_dequantizer("iq4_xs")
def dequantize_iq4_xs(q, ne0: int):
    b = split_blocks(q, 136)
    d = unpack_f16(b[..., 0:2])
    dl = d[..., None] * xs_block_scales(b).astype(jnp.float32)
    codes = unnibbles32(b[..., 8:].reshape(b.shape[:-1] + (8, 16)))
    return (dl[..., None] * jnp.asarray(_K)[codes]).reshape(q.shape[0], ne0)


__all__ = ["KVALUES_IQ4NL", "IQ4NL_INDEX", "best_code", "block_scales", "search_weights"]
