"""Engines run the studies' per-sample ``map`` over the samples and ``reduce`` on the driver.

* ``inprocess`` (default): :meth:`robustkit.studies.base.Study.execute`, batches in this process;
* ``ray``: :mod:`robustkit.engines.ray_engine`, Ray Data over the sample manifest with an actor
  pool of :class:`~robustkit.model.ModelAdapter` (``pip install "robustkit[ray]"``).

Both give the same records, ordered by sample, and so the same results.
"""

from __future__ import annotations

__all__ = ["ENGINES"]

ENGINES = ("inprocess", "ray")
