"""A deterministic phase-contrast microscope over a 96-well plate of adherent human BM-MSCs.

The simulator is the embedded default backend and the source of the CNN's training images, so it
aims at a classification task that is learnable from morphology but not trivial. Its parts:

* :mod:`hardware.sim.config`: :class:`SimulationConfig`, everything that fixes what is rendered.
* :mod:`hardware.sim.truth`: each well's hidden ground truth (:class:`WellTruth`) and the
  plate's flow-cytometry export (:func:`fct_export_csv`).
* :mod:`hardware.sim.cells`: cell shapes per well, drawn as a phase image.
* :mod:`hardware.sim.focus`: each plate's focus surface (tilt, bow, per-well offsets) that
  the reflection autofocus locks on, and :class:`FocusTruth` (where a field is sharp).
* :mod:`hardware.sim.optics`: optics and camera, phase image -> uint16 frame
  (:func:`render_field`, :func:`pixel_size_um`); the defocus blur follows the focus error.
* :mod:`hardware.sim.timing`: :class:`InstrumentTiming` (stage, focus, camera, autofocus
  times) and the instrument clock ("fast": recorded only, "realtime": also slept).
* :mod:`hardware.sim.channels`: the light paths a multi-channel field is exposed through
  (:data:`SIM_CHANNELS`: phase contrast in focus and at +-2 um, brightfield).
* :mod:`hardware.sim.microscope`: :class:`SimulatedMicroscope`, the
  :class:`hardware.microscope.Microscope` over all of it (focus drive, continuous focus,
  ``full_focus``, instrument time), and :func:`well_at`.
* :mod:`hardware.sim.mm_devices`: the same simulator as Micro-Manager devices on pymmcore-plus's
  UniMMCore, with ``simulated_microscope.cfg``. Not re-exported here: it imports pymmcore-plus,
  which the rest of the simulator does not need; import it from its module.
"""

from hardware.sim.channels import SIM_CHANNELS, SimChannel, default_channels
from hardware.sim.config import SimulationConfig
from hardware.sim.focus import FocusSurface, FocusTruth, focus_surface, surface_z_um
from hardware.sim.microscope import SimulatedMicroscope, well_at
from hardware.sim.optics import OBJECTIVE_MAGNIFICATION, pixel_size_um, render_field
from hardware.sim.timing import InstrumentTiming, TimingMode
from hardware.sim.truth import (
    FCT_COLUMNS,
    FCT_THRESHOLD_PCT,
    WellTruth,
    fct_export_csv,
    plate_truth,
    well_truth,
)

__all__ = [
    "FCT_COLUMNS",
    "FCT_THRESHOLD_PCT",
    "OBJECTIVE_MAGNIFICATION",
    "SIM_CHANNELS",
    "FocusSurface",
    "FocusTruth",
    "InstrumentTiming",
    "SimChannel",
    "SimulatedMicroscope",
    "SimulationConfig",
    "TimingMode",
    "WellTruth",
    "default_channels",
    "fct_export_csv",
    "focus_surface",
    "pixel_size_um",
    "plate_truth",
    "render_field",
    "surface_z_um",
    "well_at",
    "well_truth",
]
