"""Microscope backends by name: what ``MSCREEN_MICROSCOPE`` may say, and how each is built.

A new backend is one module (its :class:`hardware.microscope.PlateScanner`, or a
:class:`hardware.microscope.Microscope` for :class:`StepScanner`) plus one :func:`register` call
below. Factories import their driver on use: pymmcore-plus and pycromanager are heavy, and a
backend that is not chosen should cost nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hardware.autofocus import check_autofocus_mode
from hardware.microscope import PlateScanner, StepScanner

if TYPE_CHECKING:
    from hardware.sim import SimulationConfig


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """What any backend may need, from the service's settings.

    Attributes:
        simulation_seed: seed of the simulated plates (simulator backends).
        simulation_high_fraction: share of high wells on simulated plates (their prevalence).
        mm_app_path: Micro-Manager install folder, to start it headless (with ``mm_config``).
        mm_config: Micro-Manager hardware configuration (.cfg).
        mm_port: port of a running Micro-Manager's ZMQ server.
        camera_bit_depth: significant bits of a real camera's pixel values (None: the dtype's
            full range).
        acquisition_channels: channel-group presets to expose every field through (each field
            is then one (H, W, C) image, for a ``band_source="channels"`` model); empty: one
            frame per field, as always. Simulators offer "Phase", "Brightfield", "Phase+2um",
            "Phase-2um"; a real Micro-Manager needs a config group "Channel" with these presets.
        autofocus: how each site is focused (``MSCREEN_AUTOFOCUS``): "continuous" (default:
            the focus lock, as before), "none" (fixed z), "hardware" (the autofocus device's
            ``fullFocus`` per site), "software" (image-based search) or "map" (focus map); see
            :data:`hardware.autofocus.AutofocusMode`.
        sim_timing: the simulators' timing model (``MSCREEN_SIM_TIMING``): "fast" records
            instrument time without waiting, "realtime" also sleeps it (demos, the page).

    Raises:
        ValueError: an unknown ``autofocus`` or ``sim_timing``.
    """

    simulation_seed: int = 0
    simulation_high_fraction: float = 0.5
    mm_app_path: Path | None = None
    mm_config: Path | None = None
    mm_port: int = 4827
    camera_bit_depth: int | None = None
    acquisition_channels: tuple[str, ...] = ()
    autofocus: str = "continuous"
    sim_timing: str = "fast"

    def __post_init__(self) -> None:
        check_autofocus_mode(self.autofocus)
        if self.sim_timing not in SIM_TIMINGS:
            raise ValueError(
                f"unknown simulator timing {self.sim_timing!r}; expected one of {list(SIM_TIMINGS)}"
            )

    def simulation_config(self) -> SimulationConfig:
        """The simulators' configuration from these options (seed, prevalence, timing mode)."""
        from hardware.sim import SimulationConfig

        timing: Any = self.sim_timing
        return SimulationConfig(
            seed=self.simulation_seed,
            high_fraction=self.simulation_high_fraction,
            timing_mode=timing,
        )


SIM_TIMINGS: tuple[str, ...] = ("fast", "realtime")
"""Values of :attr:`BackendOptions.sim_timing` (the simulator's ``timing_mode``)."""


@dataclass(frozen=True)
class Backend:
    """A named way to build the plate scanner.

    Attributes:
        name: the value of ``MSCREEN_MICROSCOPE``.
        instrument: the default instrument name (one scan runs per instrument at a time).
        build: makes the scanner (may connect to hardware; raises ValueError on bad options).
        bit_depth: the significant bits of the frames it delivers, for code that meets its
            stored frames without the acquisition (training on stored plates, overlays).
    """

    name: str
    instrument: str
    build: Callable[[BackendOptions], PlateScanner]
    bit_depth: Callable[[BackendOptions], int | None]


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    if backend.name in _BACKENDS:
        raise ValueError(f"a microscope backend named {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    return backend


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown microscope backend {name!r}; known: {', '.join(_BACKENDS)}"
        ) from None


# -- the built-in backends ----------------------------------------------------------------------
def _simulated_bit_depth(options: BackendOptions) -> int:
    return options.simulation_config().bit_depth


def _simulated(options: BackendOptions) -> PlateScanner:
    from hardware.sim import SimulatedMicroscope

    microscope = SimulatedMicroscope(options.simulation_config())
    return StepScanner(
        microscope, channels=options.acquisition_channels, autofocus=options.autofocus
    )


def _pycromanager_sim(options: BackendOptions) -> PlateScanner:
    from hardware.pycromanager import PycromanagerScanner, PycromanagerSettings
    from hardware.sim.mm_devices import build_simulated_core, set_plate

    config = options.simulation_config()
    core = build_simulated_core(config)
    return PycromanagerScanner(
        core=core,
        # set_plate(core, barcode, plate); PycromanagerScanner passes the plate when it can
        load_plate=functools.partial(set_plate, core),
        settings=PycromanagerSettings(
            camera_bit_depth=config.bit_depth,
            channels=_sim_channels(options),
            autofocus=options.autofocus,
        ),
    )


def _sim_channels(options: BackendOptions) -> tuple[str, ...]:
    """The requested channels, checked against the simulator's presets now (not mid-scan)."""
    from hardware.sim.channels import check_sim_channels

    return tuple(c.name for c in check_sim_channels(options.acquisition_channels))


def _pycromanager(options: BackendOptions) -> PlateScanner:
    from hardware.pycromanager import PycromanagerScanner, PycromanagerSettings

    settings = PycromanagerSettings(
        camera_bit_depth=options.camera_bit_depth,
        channels=options.acquisition_channels,
        autofocus=options.autofocus,
    )
    if options.mm_app_path is not None:
        if options.mm_config is None:
            raise ValueError("MSCREEN_MM_APP_PATH needs MSCREEN_MM_CONFIG (the hardware .cfg)")
        return PycromanagerScanner.start_headless(
            str(options.mm_app_path), str(options.mm_config), port=options.mm_port,
            settings=settings,
        )  # fmt: skip
    return PycromanagerScanner(port=options.mm_port, settings=settings)


register(
    Backend(
        name="pycromanager-sim",
        instrument="simulated",
        build=_pycromanager_sim,
        bit_depth=_simulated_bit_depth,
    )
)
register(
    Backend(
        name="simulated", instrument="simulated", build=_simulated, bit_depth=_simulated_bit_depth
    )
)
register(
    Backend(
        name="pycromanager",
        instrument="micromanager",
        build=_pycromanager,
        bit_depth=lambda options: options.camera_bit_depth,
    )
)
