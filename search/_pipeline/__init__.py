"""The stages over versioned files: prepare (every check) -> measure (one folder per model,
corpus and imatrix, any number of budgets) -> one study per budget -> finish (final pick,
held-out comparison, exports, report). Stage functions return frozen values; nothing here
imports the CLI."""

from ._evaluate import evaluate_recipe
from ._export import export
from ._finish import at_floor, finish, heldout_rows, select
from ._inspect import as_recipe, inspect, mix
from ._measure import (FORMAT as MEASURE_FORMAT, Measurement, MeasurementError, Probes,
                       calib_session, evaluate_staged, measure)
from ._model import load_model
from ._options import (DEFAULT_TRIALS, OptionsError, SearchOptions, default_of, merge,
                       option_fields, per_budget)
from ._prepare import MeasureSettings, Plan, ProbeSettings, Spec, default_types, header, prepare
from ._run import (StudyMismatch, best_trial, distinct_plans, enqueue, open_study, optimize,
                   prior_table, run_study, trials_by_origin, warm_starts, worker_main)
from ._score import default_out as default_score_dir
from ._score import score
from ._search import run_search
from ._ui import SILENT, Ui
from ._verify import verify
from ._write import write_model

__all__ = ["DEFAULT_TRIALS", "MEASURE_FORMAT", "MeasureSettings", "Measurement",
           "MeasurementError", "OptionsError", "Plan", "ProbeSettings", "Probes", "SILENT",
           "SearchOptions", "Spec", "StudyMismatch", "Ui", "as_recipe", "at_floor", "best_trial",
           "calib_session", "default_of", "default_score_dir", "default_types",
           "distinct_plans", "enqueue", "evaluate_recipe", "evaluate_staged", "export",
           "finish", "header", "heldout_rows", "inspect", "load_model", "measure", "merge",
           "mix", "open_study", "optimize", "option_fields", "per_budget", "prepare",
           "prior_table", "run_search", "run_study", "score", "select", "trials_by_origin",
           "verify", "warm_starts", "worker_main", "write_model"]
