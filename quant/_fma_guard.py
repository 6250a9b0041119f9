"""FMA-proof kernels for backends that contract ``a*b + c`` (GPUs; CPUs without quant's ISA cap).

    guarded(fn) -> g      g(*args, k) == fn(*args) with every float product made opaque
                          k: int32 scalar 0 passed at run time (never a constant)

XLA's GPU backend (and its CPU backend when FMA instructions are allowed) lets LLVM and ptxas
fuse a product into the addition that consumes it; ggml's C rounds the product first.  Neither
``lax.optimization_barrier`` nor ``lax.reduce_precision`` stops that, and computing the product
in float64 does not either: LLVM narrows ``fptrunc(fpext a * fpext b)`` back to a float32
multiply (exact by Figueroa's theorem) and then fuses it (all three measured on XLA CPU with
``--xla_cpu_max_isa=AVX2``, which contracts like a GPU).  What no compiler can remove is an
integer operation on a value it does not know: each product's bits are XORed with ``k``, a
run-time zero, so an addition only ever sees an already rounded float32 (or float64) product.

``g`` re-evaluates ``fn``'s jaxpr with that rule for ``mul``, ``integer_pow``, ``square`` and
``div`` (XLA may rewrite a division into a multiplication), recursing into jit, scan, while,
cond and custom-derivative calls; any other primitive that carries a jaxpr is refused.  Cost:
one XOR per product.  The kernels themselves are unchanged, so the guarded program can be (and
is, in the tests) run on the CPU backend and compared with ggml's bytes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

_GUARDED = frozenset({"mul", "integer_pow", "square", "div"})
_INT_OF = {np.dtype(np.float32): jnp.int32, np.dtype(np.float64): jnp.int64,
           np.dtype(np.float16): jnp.int16, np.dtype(jnp.bfloat16): jnp.int16}


def _opaque(v, k):
    """``v`` with its bits XORed with the run-time zero ``k`` (identity, but not to a compiler)."""
    it = _INT_OF.get(np.dtype(v.dtype))
    if it is None:
        return v
    bits = lax.bitcast_convert_type(v, it)
    return lax.bitcast_convert_type(bits ^ lax.convert_element_type(k, it), v.dtype)


def _read(env, v):
    if isinstance(v, Literal):
        return np.asarray(v.val, dtype=v.aval.dtype)
    return env[v]


def _eval(jaxpr, consts, args, k):
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        ins = [_read(env, v) for v in eqn.invars]
        rule = _RULES.get(eqn.primitive.name, _bind)
        outs = rule(eqn, ins, k)
        if not eqn.primitive.multiple_results:
            outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [_read(env, v) for v in jaxpr.outvars]


def _bind(eqn, ins, k):
    if any(_has_jaxpr(p) for p in eqn.params.values()):
        raise NotImplementedError(f"fma guard: no rule for {eqn.primitive.name} (holds a jaxpr)")
    out = eqn.primitive.bind(*ins, **eqn.params)
    if eqn.primitive.name in _GUARDED and jnp.issubdtype(out.dtype, jnp.floating):
        return _opaque(out, k)
    return out


def _has_jaxpr(p) -> bool:
    if isinstance(p, (tuple, list)):
        return any(_has_jaxpr(q) for q in p)
    return isinstance(p, (ClosedJaxpr, Jaxpr))


def _closed(j):
    return (j.jaxpr, j.consts) if hasattr(j, "consts") else (j, [])


def _inline(key):
    def rule(eqn, ins, k):
        jaxpr, consts = _closed(eqn.params[key])
        return _eval(jaxpr, consts, ins, k)

    return rule


def _custom_jvp(eqn, ins, k):
    jaxpr, consts = _closed(eqn.params["call_jaxpr"])
    return _eval(jaxpr, consts, ins, k)


def _scan(eqn, ins, k):
    p = eqn.params
    nc, ncar = p["num_consts"], p["num_carry"]
    jaxpr, consts = _closed(p["jaxpr"])
    c_in, init, xs = ins[:nc], ins[nc:nc + ncar], ins[nc + ncar:]

    def body(carry, x):
        out = _eval(jaxpr, consts, [*c_in, *carry, *x], k)
        return out[:ncar], out[ncar:]

    carry, ys = lax.scan(body, list(init), list(xs), length=p["length"], reverse=p["reverse"],
                         unroll=p["unroll"])
    return [*carry, *ys]


def _while(eqn, ins, k):
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cj, cconsts = _closed(p["cond_jaxpr"])
    bj, bconsts = _closed(p["body_jaxpr"])
    cc, bc, init = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
    return lax.while_loop(lambda c: _eval(cj, cconsts, [*cc, *c], k)[0],
                          lambda c: _eval(bj, bconsts, [*bc, *c], k), list(init))


def _cond(eqn, ins, k):
    branches = [_closed(b) for b in eqn.params["branches"]]
    fns = [lambda *ops, b=b: _eval(b[0], b[1], list(ops), k) for b in branches]
    return lax.switch(ins[0], fns, *ins[1:])


_RULES = {
    "jit": _inline("jaxpr"), "pjit": _inline("jaxpr"), "closed_call": _inline("call_jaxpr"),
    "core_call": _inline("call_jaxpr"), "remat": _inline("jaxpr"), "checkpoint": _inline("jaxpr"),
    "custom_jvp_call": _custom_jvp, "custom_vjp_call": _inline("call_jaxpr"),
    "custom_vjp_call_jaxpr": _inline("fun_jaxpr"),
    "scan": _scan, "while": _while, "cond": _cond,
}


def guarded(fn):
    """``g(*args, k)``: ``fn(*args)`` (arrays, ``None`` allowed) with every product opaque."""

    def g(*args):
        *args, k = args
        spec = [None if a is None else jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
        live = [i for i, a in enumerate(args) if a is not None]

        def flat(*xs):
            full = list(spec)
            for i, x in zip(live, xs):
                full[i] = x
            return fn(*full)

        closed, shapes = jax.make_jaxpr(flat, return_shape=True)(*[spec[i] for i in live])
        with jax.enable_x64(True):
            outs = _eval(closed.jaxpr, closed.consts, [args[i] for i in live], k)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), outs)

    return g
