"""ik_llama.cpp iq4_kss: row-scaled 4.0-bpw iq4, block scale hidden in code parity (spec 2.16).

Kernels (registered for target "ik"):

    quantize_rows(x f32[R, ne0], w f32[ne0] | None) -> uint8[R, 4 + ne0/256 * 128]
    dequantize_rows(q uint8[R, row_bytes], ne0) -> f32[R, ne0]

Inside, each block of 32 is read as 8 quads [R, S, 8, 8, 4]: quad k holds elements
(2k, 2k+16, 2k+1, 2k+17), its 4 codes form a 16-bit word v with an even number of set bits.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _iqk_common as C
from . import _primitives as P
from ._iqk_ks import flat, odd_scales, prepare32, row_max_abs, sigma_2, w_x2

_PERM = np.array([[2 * k, 2 * k + 16, 2 * k + 1, 2 * k + 17] for k in range(8)], np.int32).reshape(
    -1
)
_INV = np.argsort(_PERM)
_BASE = C.TABLES["iq4k"][:16]
_POP = np.array([i.bit_count() for i in range(16)], np.int32)
_OFFS = (-2, -1, 1, 2)


def _quads(a):
    return a[..., _PERM].reshape(a.shape[:-1] + (8, 4))


def _prune(code, x, w, dl, shifted):
    """PRUNE: make the popcount of each quad's 4 codes even by the cheapest +-1/+-2 change of one
    code.
    code/x/w [..., 8, 4]; dl [...] the scale used; shifted [...] table half of the new codes."""
    pop = jnp.asarray(_POP)
    odd = (jnp.sum(pop[code], axis=-1) % 2) == 1
    dlq = dl[..., None, None]
    d0 = dlq * jnp.asarray(_BASE)[code] - x
    scores, cands = [], []
    for j in range(4):
        for o in _OFFS:
            qq = code[..., j] + o
            ok = (
                (qq >= 0)
                & (qq <= 15)
                & (((pop[jnp.clip(qq, 0, 15)] - pop[code[..., j]]) % 2) == 1)
            )
            v1 = C.table_values("iq4k", jnp.clip(qq, 0, 15), shifted[..., None])
            d1 = dlq[..., 0] * v1 - x[..., j]
            s = w[..., j] * (d1 * d1 - d0[..., j] * d0[..., j])
            scores.append(jnp.where(ok, s, jnp.inf))
            cands.append(qq)
    pick = jnp.argmin(jnp.stack(scores, axis=-1), axis=-1)
    newq = jnp.take_along_axis(jnp.stack(cands, axis=-1), pick[..., None], axis=-1)[..., 0]
    hit = (jnp.arange(4) == (pick // 4)[..., None]) & odd[..., None]
    return jnp.where(hit, newq[..., None], code)


def _codes(x, w, ident, dl, shifted):
    """Pruned codes best(U, ident*x) [..., 8, 4], table half ``shifted`` (ident, dl per block)."""
    sh = jnp.broadcast_to(shifted, ident.shape)
    code = C.best_index("iq4k", ident[..., None, None] * x, sh[..., None, None])
    return _prune(code, x, w, dl, sh)


def _sums(w, code, shifted, x):
    q = C.table_values("iq4k", code, shifted)
    return C.lsq_sums(flat4(w), flat4(q), flat4(x))


def flat4(a):
    return a.reshape(a.shape[:-2] + (-1,))


def _search(xq, wq, mx):
    """Block scales [R,S,8] (2.16): 15 x 2 tables, plus and minus pruned codes, LSQ rule."""
    d0 = -mx / jnp.float32(-127)
    zero = jnp.zeros(mx.shape, jnp.float32)

    def body(i, st):
        d, best = st
        itry = (i - 7).astype(jnp.float32)
        for flag, u0 in ((0, -127.0), (1, -123.0)):
            ident = (itry + jnp.float32(u0)) / mx
            td = 1 / ident
            sh = jnp.full(mx.shape, flag, jnp.int32)
            for sign in (1, -1):
                code = _codes(xq, wq, ident * sign, td, sh)
                sqx, sq2 = _sums(wq, code, sh[..., None, None], xq)
                ok = (sq2 > 0) & (sqx * sqx > best * sq2)
                d = jnp.where(ok, sqx / sq2, d)
                best = jnp.where(ok, d * sqx, best)
        return d, best

    d, _ = lax.fori_loop(0, 15, body, (d0, zero))
    return d


def _mse(w, code, shifted, x, dl):
    q = C.table_values("iq4k", code, shifted)
    e = x - dl[..., None, None] * q
    return C.seq_sum0(flat4(w * e * e))


def _scramble(v):
    """P(v): the 15-bit j with j ^ (j << 1) == v (prefix xor of v's bits)."""
    j = v
    for s in (1, 2, 4, 8):
        j = j ^ (j << s)
    return j & 0x7FFF


def _iq4kss_quantize(x, w):
    xs, ws = prepare32(x, w, sigma_2, w_x2)
    xq, wq = _quads(xs), _quads(ws)
    mx, amax = C.argmax_abs(xs)
    empty = amax < jnp.float32(1e-16)
    d_b = jnp.where(empty, 0, _search(xq, wq, jnp.where(empty, 1, mx)))
    dd = row_max_abs(d_b) / jnp.float32(127)
    u, ls = odd_scales(d_b, dd)
    dl = dd[:, None, None] * ls.astype(jnp.float32)
    idl = 1 / jnp.where(dl != 0, dl, 1)
    zero, one = jnp.zeros(dl.shape, jnp.int32), jnp.ones(dl.shape, jnp.int32)
    cp, cm = _codes(xq, wq, idl, dl, zero), _codes(xq, wq, idl, dl, one)
    use_m = _mse(wq, cm, one[..., None, None], xq, dl) < _mse(
        wq, cp, zero[..., None, None], xq, dl
    )
    code = jnp.where(use_m[..., None, None], cm, cp)
    q = C.table_values("iq4k", code, use_m[..., None, None]) * ls[..., None, None].astype(
        jnp.float32
    )
    sqx, sq2 = C.lsq_sums(flat(wq), flat(q), flat(xq))
    d = jnp.where(dd == 0, dd, jnp.where(sq2 > 0, (sqx / sq2) * jnp.float32(1.01), dd))
    v = code[..., 0] | code[..., 1] << 4 | code[..., 2] << 8 | code[..., 3] << 12
    byte = (2 * u + use_m.astype(jnp.int32))[..., None]
    words = (_scramble(v.astype(jnp.uint32)) << 1) | ((byte >> jnp.arange(8)) & 1).astype(
        jnp.uint32
    )
    words = jnp.where((dd != 0)[:, None, None, None], words, 0)
    return jnp.concatenate([P.pack_f32(d), flat(P.pack_u16(words))], axis=-1)


def _iq4kss_dequantize(q, ne0):
    r, s = q.shape[0], ne0 // 256
    words = P.unpack_u16(q[:, 4:].reshape(r, s, 8, 8, 2))
    a = words & 0xFFFE
    v = (a ^ (a >> 1)).astype(jnp.int32)
    byte = jnp.sum((words & 1).astype(jnp.int32) << jnp.arange(8), axis=-1)
    code = jnp.stack([(v >> (4 * j)) & 15 for j in range(4)], axis=-1).reshape(r, s, 8, 32)[
        ..., _INV
    ]
    dl = P.unpack_f32(q[:, :4])[:, None, None] * ((byte & 254) - 127).astype(jnp.float32)
    vals = C.table_values("iq4k", code, (byte & 1)[..., None])
    return flat(dl[..., None] * vals)


quantize_iq4_kss, dequantize_iq4_kss = C.register_pair(
    "iq4_kss", _iq4kss_quantize, _iq4kss_dequantize
)
