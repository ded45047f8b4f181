"""Our :class:`hardware.microscope.ScanPlan` as pycromanager sees it.

One scan is one pycromanager ``Acquisition`` fed with
``multi_d_acquisition_events(xy_positions=..., position_labels=..., channel_group="Objective",
channels=[objective])``: one event per field, labelled with the well name (``"B7"``) or, with
several fields per well, Micro-Manager's HCS site name (``"B7-Site_0"``). A multi-channel scan
uses ``channel_group="Channel", channels=[...]`` instead: one event per field and channel, the
channels of a field one after the other (the objective is set once before the acquisition).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pycromanager import multi_d_acquisition_events

from hardware.microscope import ScanPlan


@dataclass(frozen=True)
class Site:
    """One field of the plan: its pycromanager position label and stage position (um)."""

    label: str
    well: str
    index: int
    x_um: float
    y_um: float


def site_label(well: str, index: int, fields_per_well: int) -> str:
    """Position label of a field: the well name, or Micro-Manager's HCS ``"B7-Site_0"`` form
    when a well has several fields."""
    return well if fields_per_well == 1 else f"{well}-Site_{index}"


def plan_sites(plan: ScanPlan) -> list[Site]:
    """All fields of ``plan`` in acquisition order, at ``well_center_um + field offset``."""
    offsets = plan.offsets()
    sites = []
    for well in plan.wells:
        cx, cy = plan.plate.well_center_um(well)
        for index, (dx, dy) in enumerate(offsets):
            label = site_label(well, index, plan.fields_per_well)
            sites.append(Site(label, well, index, cx + dx, cy + dy))
    labels = [site.label for site in sites]
    if len(set(labels)) != len(labels):
        raise ValueError("a scan plan must not name a well twice")
    return sites


def plan_events(
    sites: list[Site],
    objective: str,
    objective_group: str,
    *,
    channels: Sequence[str] = (),
    channel_group: str = "Channel",
) -> list[dict[str, Any]]:
    """pycromanager events for ``sites``: one per field at ``objective``, or with ``channels``
    one per field and channel (presets of ``channel_group``), a field's channels in a row."""
    if channels:
        group, presets = channel_group, list(channels)
    else:
        group, presets = objective_group, [objective]
    events: list[dict[str, Any]] = multi_d_acquisition_events(
        xy_positions=[(site.x_um, site.y_um) for site in sites],
        position_labels=[site.label for site in sites],
        channel_group=group,
        channels=presets,
    )
    return events
