"""The flow-cytometry (FCT) definition of a well's functionality, the product's ground truth.

A well is "high" iff CD73+ and CD90+ cells are both strictly above 95 % of gated events (the
ISCT identity criterion). The simulated cytometer (hardware/sim/truth.py) and the FCT uploads
(app/ground_truth.py) use this one definition.
"""

from __future__ import annotations

from typing import Literal

FCT_THRESHOLD_PCT = 95.0  # a well is "high" iff both markers are strictly above this


def fct_label(cd73_pct: float, cd90_pct: float) -> Literal["high", "low"]:
    return "high" if cd73_pct > FCT_THRESHOLD_PCT and cd90_pct > FCT_THRESHOLD_PCT else "low"
