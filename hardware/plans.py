"""useq-schema plate plans at the hardware edge: a ``useq.WellPlatePlan`` as a :class:`ScanPlan`.

Labs and the pymmcore-plus ecosystem describe a plate acquisition as a ``WellPlatePlan``: the
plate type, the stage position of A1's centre (um), the plate's rotation, the selected wells and
the points to image in each well. :func:`scan_plan_from_useq` turns one into the product's
:class:`~hardware.microscope.ScanPlan`.

Frames: useq's stage frame has y pointing up (row B at a smaller y than row A, a grid's first
row at +y); the product's (:mod:`hardware.plate`) has y pointing down. A1's centre is taken as
given, and everything relative to it (the rows, the points in a well) is mirrored in y, so a
plan images the same wells and the same parts of each well as useq would; the rotation keeps
its sign (anti-clockwise as seen in each frame).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from functools import cache
from typing import Any

import useq

from hardware.microscope import OBJECTIVES, Objective, ScanPlan
from hardware.plate import PlateGeometry, plate_geometry

logger = logging.getLogger(__name__)

EDGE_MARGIN_UM = 50.0
"""Clearance kept between a field's corners and the well's wall, in um (the wall's meniscus and
shadow spoil the image before the wall itself)."""

MAX_FIELDS_PER_WELL = 25
"""Most points per well a plan may ask for (the service's fields_per_well bound)."""


def _plate_type(plate: useq.WellPlate) -> str:
    """The registry key of a plan's plate: its name if registered, else the key whose
    geometry it has (a plan may spell the plate out instead of naming it)."""
    keys = useq.registered_well_plate_keys()
    if plate.name in keys:
        return str(plate.name)
    for key in sorted(keys):
        known = useq.WellPlate.from_str(key)
        if (known.rows, known.columns, known.well_spacing, known.well_size) == (
            plate.rows,
            plate.columns,
            plate.well_spacing,
            plate.well_size,
        ) and known.circular_wells == plate.circular_wells:
            return key
    raise ValueError(
        f"plate {plate.name or '(unnamed)'} ({plate.rows}x{plate.columns}, spacing "
        f"{plate.well_spacing} mm) is not a registered plate type; use one of "
        f"{', '.join(sorted(keys))}"
    )


MAX_PLATE_WELLS = 1536
"""Most wells a plan's plate may have (the registry's largest plate)."""


def parse_plan(plan: useq.WellPlatePlan | Mapping[str, Any]) -> useq.WellPlatePlan:
    """A ``WellPlatePlan`` from itself or its JSON object.

    The plate is checked first: useq builds a rows x columns index array while validating the
    well selection, so a plate of a billion wells in a request must be refused before that.

    Raises:
        ValueError: a bad plan (pydantic's ValidationError is one), or a plate of more than
            :data:`MAX_PLATE_WELLS` wells.
    """
    if isinstance(plan, useq.WellPlatePlan):
        return plan
    try:
        data = dict(plan)
        # As WellPlatePlan reads its plate: a registry key, a well count, or the fields.
        raw = useq.WellPlate.validate_plate(data.get("plate"))  # type: ignore[operator]
        plate = raw if isinstance(raw, useq.WellPlate) else useq.WellPlate.model_validate(raw)
        if plate.size > MAX_PLATE_WELLS:
            raise ValueError(
                f"plate {plate.name or '(unnamed)'} has {plate.rows} x {plate.columns} wells; "
                f"at most {MAX_PLATE_WELLS}"
            )
        parsed = useq.WellPlatePlan.model_validate(data)
    except (TypeError, AttributeError, KeyError, IndexError, ArithmeticError) as exc:
        # useq's validators assume well-typed input in places (a list where a number belongs
        # reaches numpy): whatever breaks inside them is still a bad plan, not a server error.
        raise ValueError(
            f"not a valid useq-schema WellPlatePlan ({type(exc).__name__}: {exc}); see "
            "https://pymmcore-plus.github.io/useq-schema/ for its fields"
        ) from exc
    _check_plan_numbers(parsed)
    return parsed


MAX_STAGE_UM = 1_000_000.0
"""Largest |coordinate| of A1's centre a plan may give, um (a metre: beyond any stage)."""


def _check_plan_numbers(plan: useq.WellPlatePlan) -> None:
    """A1's centre and the rotation must be finite numbers in range, and no number of the plan
    may be NaN or infinite (JSON's NaN and Infinity tokens parse; they would reach the stage,
    and JSON columns cannot store them)."""
    try:
        json.dumps(plan.model_dump(mode="json"), allow_nan=False)
    except ValueError:
        raise ValueError("the plate plan holds a NaN or infinite number") from None
    a1 = [float(v) for v in plan.a1_center_xy]
    if not all(math.isfinite(v) and abs(v) <= MAX_STAGE_UM for v in a1):
        raise ValueError(
            f"a1_center_xy must be finite stage coordinates within +-{MAX_STAGE_UM:g} um, got {a1}"
        )
    rotation = float(plan.rotation or 0.0)
    if not (math.isfinite(rotation) and -360.0 <= rotation <= 360.0):
        raise ValueError(f"rotation must be a finite angle within +-360 degrees, got {rotation}")
    if plan.selected_wells is not None and len(plan.selected_well_names) > plan.plate.size:
        raise ValueError(
            f"selected_wells names {len(plan.selected_well_names)} wells on a plate of "
            f"{plan.plate.size}: a well may be selected once"
        )


def plan_geometry(plan: useq.WellPlatePlan) -> PlateGeometry:
    """The plate geometry a plan describes: the registry's type, the plan's A1 and rotation."""
    geometry = plate_geometry(_plate_type(plan.plate))
    x, y = (float(v) for v in plan.a1_center_xy)
    return dataclasses.replace(
        geometry, a1_center_um=(x, y), rotation_deg=float(plan.rotation or 0.0)
    )


def plan_wells(plan: useq.WellPlatePlan) -> list[str]:
    """Names of the selected wells, in useq's order (its acquisition order).

    Raises:
        ValueError: ``selected_wells`` unset. useq is of two minds about it (the plan's length
            counts no wells, iterating it visits every well, and its JSON reads back as none),
            so a scan asks for the wells explicitly.
    """
    if plan.selected_wells is None:
        raise ValueError(
            "the plate plan leaves selected_wells unset (useq counts no wells but iterates all "
            "of them); set it, e.g. [[0, 1], [0, 0]] for A1 and B1, or a slice in Python"
        )
    return [str(name) for name in plan.selected_well_names]


def plan_offsets_um(plan: useq.WellPlatePlan) -> list[tuple[float, float]]:
    """(dx, dy) of each point from its well's centre in the product's y-down frame, in um, in
    useq's order (the same for every well).

    Raises:
        ValueError: a plan whose points are absolute positions, or random points without a
            seed (a resumed scan must revisit the same points).
    """
    points = plan.well_points_plan
    count = plan.num_points_per_well  # before listing them: a request may ask for millions
    if not 1 <= count <= MAX_FIELDS_PER_WELL:
        raise ValueError(
            f"the plate plan has {count} points per well; 1..{MAX_FIELDS_PER_WELL} allowed"
        )
    if isinstance(points, useq.RelativePosition):
        relative = [points]
    elif isinstance(points, useq.RandomPoints) and points.random_seed is None:
        raise ValueError(
            "well_points_plan RandomPoints has no random_seed: give one, so that a resumed "
            "scan (and the record of this one) has the same points"
        )
    elif isinstance(points, useq.GridRowsColumns | useq.GridWidthHeight | useq.RandomPoints):
        relative = list(points)
    else:
        raise ValueError(
            f"well_points_plan {type(points).__name__} is not supported; use RelativePosition, "
            "GridRowsColumns, GridWidthHeight or RandomPoints (points relative to each well)"
        )
    return [(float(p.x) + 0.0, 0.0 - float(p.y)) for p in relative]


def check_fields_inside(
    geometry: PlateGeometry,
    offsets: list[tuple[float, float]],
    field_of_view_um: tuple[float, float],
    *,
    margin_um: float = EDGE_MARGIN_UM,
) -> None:
    """Every field, a ``field_of_view_um`` rectangle centred on its offset, keeps ``margin_um``
    from the well's wall (its half-diagonal plus the margin fits inside the well).

    Raises:
        ValueError: naming the first point that does not, how far it may go, and the fix.
    """
    width, height = field_of_view_um
    clearance = math.hypot(width, height) / 2.0 + margin_um
    reach = geometry.well_diameter_um / 2.0 - clearance
    if reach < 0:
        raise ValueError(
            f"a {width:.0f} x {height:.0f} um field does not fit inside a "
            f"{geometry.well_diameter_um:.0f} um well of a {geometry.name} plate with a "
            f"{margin_um:.0f} um margin; use a higher-magnification objective or another plate"
        )
    shape = "distance from the centre" if geometry.circular_wells else "|dx| and |dy|"
    for index, (dx, dy) in enumerate(offsets):
        if not geometry.inside_well(dx, dy, clearance):
            raise ValueError(
                f"point {index} of the well points plan, ({dx:.0f}, {dy:.0f}) um from the well "
                f"centre, puts a {width:.0f} x {height:.0f} um field within {margin_um:.0f} um "
                f"of the wall of a {geometry.well_diameter_um:.0f} um "
                f"{'round' if geometry.circular_wells else 'square'} {geometry.name} well; keep "
                f"the {shape} <= {reach:.0f} um (a smaller grid, fov or max_width/max_height)"
            )


def scan_plan_from_useq(
    plan: useq.WellPlatePlan | Mapping[str, Any],
    *,
    barcode: str,
    objective: Objective,
    field_of_view_um: tuple[float, float],
    margin_um: float = EDGE_MARGIN_UM,
) -> ScanPlan:
    """The :class:`ScanPlan` that acquires ``plan`` on plate ``barcode`` at ``objective``.

    Args:
        plan: a ``useq.WellPlatePlan`` or its JSON object (``model_dump(mode="json")``).
        barcode: the plate on the stage.
        objective: "40x" or "100x".
        field_of_view_um: (width, height) of one camera field at ``objective``, in um: every
            field must lie inside its well, ``margin_um`` from the wall.
        margin_um: clearance between a field's corners and the wall, in um.

    Raises:
        ValueError: an invalid plan, an unregistered or unsupported plate type, no wells
            selected, unsupported or too many points per well, or a point whose field would
            touch the well's wall (named, with the fix).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    parsed = parse_plan(plan)
    geometry = plan_geometry(parsed)
    wells = plan_wells(parsed)
    if not wells:
        raise ValueError("the plate plan selects no wells; set selected_wells")
    offsets = plan_offsets_um(parsed)
    if not offsets:  # RandomPoints that found no place for any point
        raise ValueError("the well points plan places no point in the well; loosen it")
    check_fields_inside(geometry, offsets, field_of_view_um, margin_um=margin_um)
    logger.debug("plate plan: %s, %d wells x %d fields", geometry.name, len(wells), len(offsets))
    return ScanPlan(
        barcode=barcode,
        wells=wells,
        objective=objective,
        fields_per_well=len(offsets),
        plate=geometry,
        field_offsets_um=tuple(offsets),
    )


@cache
def simulated_field_of_view_um(objective: Objective) -> tuple[float, float]:
    """(width, height) of a field of the simulated camera at ``objective``, in um (its sensor
    in pixels times the objective's pixel size): the field a plan is checked against."""
    from hardware.sim import SimulationConfig, pixel_size_um

    config = SimulationConfig()
    height, width = config.camera_shape
    size = pixel_size_um(config, objective)
    return width * size, height * size
