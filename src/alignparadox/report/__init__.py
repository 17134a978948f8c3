"""The HTML report: provenance, then one section per measurement, each drawn by its own
measurement (`Measurement.report_section`) with the helpers of `alignparadox.report.html`."""

from alignparadox.report.html import (
    Markup,
    ReportOptions,
    Section,
    escape,
    figure,
    format_value,
    rate,
    redact,
    table,
)
from alignparadox.report.writer import REPORT_FILE, write_report

__all__ = ["REPORT_FILE", "Markup", "ReportOptions", "Section", "escape", "figure",
           "format_value", "rate", "redact", "table", "write_report"]
