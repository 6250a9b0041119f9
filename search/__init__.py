"""gguf-recipe-search: the best mixed-precision GGUF recipe under an exact size budget.

    search._llamacpp   llama.cpp's tables: FTYPEs, default mixes, sizes, budgets, recipes, exports
    search._optimize   the optimizer, a pure function of the measurement (numpy/scipy only)
    search._study      optuna glue: objective, pruner, proposer, storages
    search._pipeline   the stages: prepare -> measure -> study per budget -> finish
    search._cli        the ``search`` command (nothing imports it)
"""

from __future__ import annotations

from ._llamacpp import *  # noqa: F401,F403
from ._llamacpp import __all__ as _llamacpp_all
from ._optimize import *  # noqa: F401,F403
from ._optimize import __all__ as _optimize_all
from ._pipeline import *  # noqa: F401,F403
from ._pipeline import __all__ as _pipeline_all
from ._study import *  # noqa: F401,F403
from ._study import __all__ as _study_all

__all__ = sorted(set(_llamacpp_all) | set(_optimize_all) | set(_study_all) | set(_pipeline_all))
