"""Studies: grids of (target × measurement × settings) cells, stored as they finish, resumable.

A measurement is one class registered with `@register_measurement` (see `measurement.py`);
`run_study` plans, skips finished cells and stores the rest; `ResultsStore` reads them back.
"""

from alignparadox.study.cells import Cell, canonical_json, content_hash
from alignparadox.study.measurement import (
    CellResult,
    Measurement,
    RunContext,
    find_measurement,
    get_measurement,
    measurement_names,
    register_measurement,
)
from alignparadox.study.runner import BACKENDS, CellOutcome, StudySummary, plan_cells, run_study
from alignparadox.study.spec import MeasurementPlan, StudySpec
from alignparadox.study.store import (
    RESULTS_FILE,
    Cache,
    CellRecord,
    ResultsStore,
    library_versions,
)

__all__ = [
    "BACKENDS", "RESULTS_FILE", "Cache", "Cell", "CellOutcome", "CellRecord", "CellResult",
    "Measurement", "MeasurementPlan", "ResultsStore", "RunContext", "StudySpec", "StudySummary",
    "canonical_json", "content_hash", "find_measurement", "get_measurement", "library_versions",
    "measurement_names", "plan_cells", "register_measurement", "run_study",
]
