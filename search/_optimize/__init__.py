"""The optimizer, a pure function of the measurement: the search space, the budget-exact
allocator, the MILP, warm starts, the calibrated prior, the surrogate, the pruning rule and
duplicate avoidance. numpy/scipy only: no optuna, no CLI."""

from ._allocate import (UnitTable, allocate, choice_of, levels_of, repair, start_choice,
                        to_plan, total, unit_table)
from ._calibrate import error_loss, group_roles, probe_level
from ._dedup import nearest_new
from ._milp import milp_choice
from ._objectives import OBJECTIVES
from ._prune import MARGIN_ALPHA_MIN, clearly_worse, full_estimate, lower_bound
from ._space import DEFAULT_TIES, MAX_PARAMS, Group, Space, SpaceError, band_size, build_space
from ._space import check_pins, check_ties, parse_pins
from ._surrogate import (TRUST, Posterior, features, fit, least_damage, mean_table,
                         probe_choices, propose, role_scales, sample_loss, scaled, type_index)
from ._warm import (cossim, experts_low, levels_below, milp, project, uniform,
                    uniform_level)

__all__ = ["DEFAULT_TIES", "MARGIN_ALPHA_MIN", "OBJECTIVES", "Group", "MAX_PARAMS", "Posterior", "Space", "SpaceError", "TRUST",
           "UnitTable", "allocate", "band_size", "build_space", "check_pins", "check_ties", "choice_of", "clearly_worse",
           "cossim", "error_loss", "experts_low", "features", "fit", "full_estimate", "group_roles",
           "least_damage", "levels_below", "levels_of", "lower_bound", "mean_table", "milp",
           "milp_choice", "nearest_new", "parse_pins", "probe_choices", "probe_level", "project",
           "propose", "repair", "role_scales", "sample_loss", "scaled", "start_choice",
           "to_plan", "total", "type_index", "uniform", "uniform_level", "unit_table"]
