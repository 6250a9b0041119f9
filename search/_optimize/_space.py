"""The search space: tensors grouped by role x layer band, each group with its options.

    group g      tensors of one role (or tied roles) in a band of consecutive layers
    options[g]   written types the group's tensors can all take, sorted by bytes ascending
    nbytes[g]    int64 [n_tensors_g, n_options_g]: bytes of each member at each option
    level        index into options[g]; one Optuna parameter per group

Pure data over the catalog; no optuna here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from quant import UserError, get_type, resolve, tensor_nbytes, type_in_target

from objectives import GGUFModel, TensorInfo

from .._llamacpp import fixed_bytes, tensor_options

# ik fuses a MoE layer's up and gate experts into one matmul, which needs one type for both
DEFAULT_TIES = {"mainline": (), "ik": (("ffn_gate_exps", "ffn_up_exps"),)}
MAX_PARAMS = 64


class SpaceError(UserError):
    pass


@dataclass(frozen=True)
class Group:
    name: str
    tensors: tuple[str, ...]
    options: tuple[str, ...]
    nbytes: np.ndarray  # int64 [n_tensors, n_options]
    units: tuple[int, ...] = ()  # unit id per tensor: tensors of one unit share a type (ties)

    def unit_ids(self) -> tuple[int, ...]:
        return self.units or tuple(range(len(self.tensors)))


@dataclass(frozen=True)
class Space:
    groups: tuple[Group, ...]
    fixed_bytes: int
    n_elements: int
    target: str

    def bytes_at(self, levels: dict[str, int]) -> int:
        return self.fixed_bytes + sum(int(g.nbytes[:, levels[g.name]].sum()) for g in self.groups)

    def extremes(self) -> tuple[int, int]:
        lo = sum(int(g.nbytes[:, 0].sum()) for g in self.groups)
        hi = sum(int(g.nbytes[:, -1].sum()) for g in self.groups)
        return self.fixed_bytes + lo, self.fixed_bytes + hi

    def group_of(self) -> dict[str, Group]:
        return {t: g for g in self.groups for t in g.tensors}


def parse_pins(pins: list[str], target: str) -> list[tuple[re.Pattern, str]]:
    """``REGEX=TYPE`` items; the first matching pin fixes a tensor's type."""
    out = []
    for item in pins:
        pattern, sep, type_ = item.rpartition("=")
        if not sep or not pattern:
            raise SpaceError(f"pin '{item}' is not REGEX=TYPE, e.g. 'token_embd=q8_0'")
        try:
            out.append((re.compile(pattern), type_in_target(type_, target).name))
        except re.error as e:
            raise SpaceError(f"pin '{item}': bad regex ({e}): fix the pattern") from None
    return out


def check_pins(tensors: list[TensorInfo], pins: list[tuple[re.Pattern, str]]) -> None:
    """Every pin must match a quantizable tensor (a typo would silently pin nothing)."""
    for rx, type_ in pins:
        if not any(rx.search(t.name) for t in tensors):
            raise SpaceError(f"pin '{rx.pattern}={type_}' matches no quantizable tensor: check "
                             "the pattern against the names 'search inspect' lists")


def check_ties(tensors: list[TensorInfo], ties: tuple[tuple[str, ...], ...]) -> None:
    """Every role of a user tie must be a role of a quantizable tensor."""
    roles = sorted({t.role for t in tensors})
    for tie in ties:
        if len(tie) < 2 or any(not r for r in tie):
            raise SpaceError(f"tie '{','.join(tie)}' is not ROLE,ROLE[,...]: e.g. "
                             "'ffn_gate,ffn_up'")
        bad = [r for r in tie if r not in roles]
        if bad:
            raise SpaceError(f"tie '{','.join(tie)}': no quantizable tensor has role "
                             f"'{bad[0]}'; roles of this model: {', '.join(roles)}")


def _pinned(t: TensorInfo, pins, target: str) -> str | None:
    for rx, type_ in pins:
        if rx.search(t.name):
            try:
                return resolve(type_, t.shape, target)
            except UserError as e:
                raise SpaceError(f"pin {rx.pattern}={type_} cannot apply to {t.name}: {e}") from None
    return None


def _role_key(role: str, ties: tuple[tuple[str, ...], ...]) -> str:
    for tie in ties:
        if role in tie:
            return "+".join(tie)
    return role


def band_size(n_layers: int, n_roles: int, max_params: int = MAX_PARAMS) -> int:
    """The smallest band of layers that keeps the layered groups within ``max_params``."""
    for b in range(1, max(n_layers, 1) + 1):
        if n_roles * math.ceil(n_layers / b) <= max_params:
            return b
    return max(n_layers, 1)


def _group_name(role: str, layers: list[int]) -> str:
    if not layers:
        return role
    lo, hi = min(layers), max(layers)
    return f"{role}@{lo}" if lo == hi else f"{role}@{lo}-{hi}"


def _options(members: list[TensorInfo], target: str, types: list[str] | None) -> list[str]:
    common = None
    for t in members:
        opts = set(tensor_options(t, target, types))
        common = opts if common is None else common & opts
    if not common:
        raise SpaceError(f"{members[0].name}: no allowed type fits all of its group: "
                         "allow more --types")
    return sorted(common, key=lambda o: (tensor_nbytes(o, members[0].shape), o))


def _make_group(name: str, members: list[TensorInfo], target: str, types, tied: bool) -> Group:
    options = _options(members, target, types)
    nbytes = np.array([[tensor_nbytes(o, t.shape) for o in options] for t in members], np.int64)
    layers = sorted({t.layer for t in members}, key=lambda x: -1 if x is None else x)
    units = tuple(layers.index(t.layer) for t in members) if tied else ()
    return Group(name, tuple(t.name for t in members), tuple(options), nbytes, units)


def build_space(model: GGUFModel, target: str, types: list[str] | None = None,
                pins: list[str] = (), ties: tuple[tuple[str, ...], ...] | None = None,
                max_params: int = MAX_PARAMS) -> Space:
    """Groups of the quantizable tensors; pinned tensors become one-option groups. ``ties``
    (default: the target's ``DEFAULT_TIES``) join roles into one group per layer."""
    ties = DEFAULT_TIES[target] if ties is None else ties
    types = [get_type(x).name for x in types] if types else None
    pin_rules = parse_pins(list(pins), target)
    check_pins(model.quantizable(target), pin_rules)
    free, pinned = [], []
    for t in model.quantizable(target):
        p = _pinned(t, pin_rules, target)
        (pinned if p else free).append((t, p))
    groups = _layered_groups([t for t, _ in free], model.hparams().n_layer, target, types, ties,
                             max_params)
    groups += [Group(f"pin:{t.name}", (t.name,), (p,), np.array([[tensor_nbytes(p, t.shape)]]))
               for t, p in pinned]
    return Space(tuple(groups), fixed_bytes(model, target), model.n_elements, target)


def _layered_groups(tensors, n_layer, target, types, ties, max_params) -> list[Group]:
    by_role: dict[str, list[TensorInfo]] = {}
    for t in tensors:
        by_role.setdefault(_role_key(t.role, ties), []).append(t)
    layered = [r for r, ts in by_role.items() if ts[0].layer is not None]
    b = band_size(n_layer, len(layered), max_params - (len(by_role) - len(layered)))
    groups = []
    for role, ts in by_role.items():
        bands: dict[int, list[TensorInfo]] = {}
        first = min((t.layer for t in ts if t.layer is not None), default=0)
        for t in ts:  # bands start at the role's first layer (a MoE model's first expert layer)
            bands.setdefault(-1 if t.layer is None else (t.layer - first) // b, []).append(t)
        for _, members in sorted(bands.items()):
            layers = sorted({t.layer for t in members if t.layer is not None})
            groups.append(_make_group(_group_name(role, layers), members, target, types,
                                      tied="+" in role))
    return groups
