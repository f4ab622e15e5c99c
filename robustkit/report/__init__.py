"""The self-contained HTML audit report (Jinja templates + matplotlib figures).

Rendering reads stored results only; it never imports TensorFlow or runs a model.

Example:
    >>> from robustkit.report import render_report
    >>> render_report("reports/audit-1")  # doctest: +SKIP
"""

from robustkit.report.render import render_report, report_html

__all__ = ["render_report", "report_html"]
