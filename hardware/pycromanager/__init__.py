"""The microscope driver: a :class:`hardware.microscope.PlateScanner` on pycromanager.

One scan is one pycromanager ``Acquisition`` fed with
``multi_d_acquisition_events(xy_positions=..., position_labels=..., channel_group="Objective",
channels=[objective])``: one event per field, labelled with the well name (``"B7"``) or, with
several fields per well, Micro-Manager's HCS site name (``"B7-Site_0"``). Frames arrive through
pycromanager's ``image_process_fn`` (which keeps them out of pycromanager's own storage) into a
queue; the scan generator groups them into wells and yields each well as soon as its fields are
in, while the acquisition goes on in pycromanager's threads. With ``PycromanagerSettings.channels``
the events loop the presets of the channel group ("Channel") per field instead, and each field
arrives as one (H, W, C) image.

* :mod:`hardware.pycromanager.scanner`: :class:`PycromanagerScanner`, where the engine runs and
  what stops a scan.
* :mod:`hardware.pycromanager.settings`: :class:`PycromanagerSettings`, timeouts and policies.
* :mod:`hardware.pycromanager.plan`: our ``ScanPlan`` as pycromanager sites and events.
* :mod:`hardware.pycromanager.acquisition`: following one ``Acquisition`` to its end.
* :mod:`hardware.pycromanager.collector`: frames and metadata from pycromanager's threads into
  wells.
* :mod:`hardware.pycromanager.engine`: pycromanager's Python engine in-process on a
  pymmcore-plus core (the one place that knows the engine's internals).
"""

from hardware.pycromanager.engine import (
    FrameLost,
    InProcessEngine,
    PycromanagerCoreAdapter,
    TaggedImage,
    camel_to_snake,
    in_process_engine,
)
from hardware.pycromanager.plan import Site, plan_events, plan_sites, site_label
from hardware.pycromanager.scanner import DEFAULT_PORT, PycromanagerScanner
from hardware.pycromanager.settings import PycromanagerSettings

__all__ = [
    "DEFAULT_PORT",
    "FrameLost",
    "InProcessEngine",
    "PycromanagerCoreAdapter",
    "PycromanagerScanner",
    "PycromanagerSettings",
    "Site",
    "TaggedImage",
    "camel_to_snake",
    "in_process_engine",
    "plan_events",
    "plan_sites",
    "site_label",
]
