"""The course's claims as experiments: `cnnlab experiment NAME` prints a measured table and writes a plot.

Each experiment lives in its own module here and registers itself with `register_experiment`.
"""

from cnnlab.experiments._base import (
    ExperimentContext,
    ExperimentResult,
    Outcome,
    get_experiment,
    list_experiments,
    register_experiment,
    run_all,
    run_experiment,
    write_lecture,
)

__all__ = ["ExperimentContext", "ExperimentResult", "Outcome", "get_experiment", "list_experiments",
           "register_experiment", "run_all", "run_experiment", "write_lecture"]
