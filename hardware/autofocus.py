"""Autofocus: what focusing one site did (:class:`AutofocusReport`).

(Skeleton: the strategies, the focus metric and the focus map follow.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

AutofocusMethod = Literal["hardware", "software", "map"]


@dataclass(frozen=True)
class AutofocusReport:
    """What autofocus did at one site.

    Attributes:
        method: "hardware" (the microscope's autofocus device, Micro-Manager ``fullFocus``),
            "software" (an image-based search) or "map" (a search near the focus map's
            prediction).
        ok: False when no focus was found; the field is then exposed at ``z_um`` anyway (the
            best guess) and its well is flagged ``focus_failed``.
        z_um: focus drive position chosen, in um.
        steps: frames exposed (software) or lock attempts (hardware).
        score: the focus metric at ``z_um`` (software/map), or the device's focus score.
        seconds: instrument time spent focusing, in s.
        predicted_z_um: the focus map's prediction the search started from (map only).
        error: why it failed (None when ``ok``).
    """

    method: AutofocusMethod
    ok: bool
    z_um: float
    steps: int
    score: float
    seconds: float
    predicted_z_um: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (stored with the image)."""
        return asdict(self)
