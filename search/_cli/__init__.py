"""The ``search`` command: one thin module per subcommand over library functions, one error
map, one ``emit``.

    search --budget B [MODEL] ...          measure, then a study per budget (the main job)
    search plan --budget B [MODEL] ...     the study's cost on this machine, before any work
    search measure [MODEL] ...             the measurement alone (reused by any budget)
    search report [--study NAME]           a finished study's summary
    search inspect [MODEL] [--as-recipe | --mix FTYPE] [--target T] [--json]
    search export RECIPE.json --format ik|mainline|json [-o DIR]
    search eval [MODEL] --recipe R.json ...
    search score [MODEL] ...
    search dashboard [--study NAME]
    search write STUDY|RECIPE.json -o OUT.gguf [--split-max-size 50G]
    search verify STUDY [--llama-bin DIR]

Known errors (``quant.UserError``) become one line on stderr and exit status 2, here only.
"""

from __future__ import annotations

import sys
from typing import Callable

from quant import UserError

from . import (_dashboard, _eval, _export, _inspect, _measure, _plan, _report, _score,
               _search, _verify, _write)

SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "measure": _measure.main, "report": _report.main, "inspect": _inspect.main,
    "export": _export.main, "eval": _eval.main, "score": _score.main,
    "dashboard": _dashboard.main, "write": _write.main, "verify": _verify.main,
    "plan": _plan.main,
}


def _run(argv: list[str]) -> int:
    fn = SUBCOMMANDS.get(argv[0]) if argv else None
    return fn(argv[1:]) if fn else _search.main(argv, list(SUBCOMMANDS))


def main(argv: list[str] | None = None) -> int:
    """The one place errors become messages: what went wrong and how to fix it, one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except UserError as e:
        print(f"search: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except MemoryError:
        print("search: error: out of memory: use a smaller --ctx or fewer --chunks, or a larger "
              "machine (see 'search plan')", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"search: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("search: interrupted (the study keeps every finished trial; run the same command "
              "to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
