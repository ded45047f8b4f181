"""Acquisition channels of the simulated microscope: phase contrast at focal offsets, brightfield.

A multi-channel field is several exposures of the same cells at the same stage position, each
through another light path (Micro-Manager's channel group switches them). The simulator renders
every channel from one drawing of the cells, with the field's own focus drift, illumination and
exposure, so the channels are co-registered pixel for pixel; only the camera noise is drawn
anew per exposure.

How a channel changes the image (see :func:`hardware.sim.optics.render_field`):

* ``focus_offset_um`` moves the focal plane by that much from where the autofocus left it. It
  widens the blur (geometric defocus of a low-NA objective) and adds the transport-of-intensity
  term of a defocused phase object, ``-dz * laplacian(phase)``: edges of thin cells turn bright
  on one side of focus and dark on the other, as they do when a user racks focus through them.
* ``contrast="brightfield"`` takes the phase ring out: no halo and no shade-off, only the weak
  absorption of unstained cells plus the defocus term (brightfield users defocus a little to see
  transparent cells at all). The field's own focus drift adds to it.

``"Phase"`` is exactly the single frame the simulator has always rendered (same pixels, same
noise), so a one-channel plan and the "Phase" channel of a multi-channel plan agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from hardware.microscope import check_channels

Contrast = Literal["phase", "brightfield"]


@dataclass(frozen=True)
class SimChannel:
    """One light path of the simulated microscope.

    Attributes:
        name: the preset name in the Micro-Manager channel group (e.g. ``"Phase+2um"``).
        contrast: "phase" (phase ring in) or "brightfield" (ring out).
        focus_offset_um: focal plane relative to the autofocus plane, in um (+ = above).
    """

    name: str
    contrast: Contrast = "phase"
    focus_offset_um: float = 0.0


PHASE = SimChannel("Phase")
"""The default light path: in-focus phase contrast, the frame single-channel scans acquire."""

SIM_CHANNELS: dict[str, SimChannel] = {
    channel.name: channel
    for channel in (
        PHASE,
        SimChannel("Brightfield", "brightfield"),
        SimChannel("Phase+2um", "phase", 2.0),
        SimChannel("Phase-2um", "phase", -2.0),
    )
}
"""Every channel the simulator (and its Micro-Manager "Channel" group) offers, by name."""

DEFAULT_CHANNEL_ORDER: tuple[str, ...] = tuple(SIM_CHANNELS)
"""Which channels a C-channel simulated data set uses when none are named: the first C."""


def sim_channel(name: str) -> SimChannel:
    """The simulated channel called ``name``.

    Raises:
        ValueError: no such channel (the message lists the known ones).
    """
    try:
        return SIM_CHANNELS[name]
    except KeyError:
        raise ValueError(
            f"unknown simulated channel {name!r}; known: {', '.join(SIM_CHANNELS)}"
        ) from None


def default_channels(count: int) -> tuple[str, ...]:
    """The first ``count`` names of :data:`DEFAULT_CHANNEL_ORDER`.

    Raises:
        ValueError: ``count`` is not within 1..len(DEFAULT_CHANNEL_ORDER).
    """
    if not 1 <= count <= len(DEFAULT_CHANNEL_ORDER):
        raise ValueError(
            f"the simulator offers {len(DEFAULT_CHANNEL_ORDER)} channels "
            f"({', '.join(DEFAULT_CHANNEL_ORDER)}), {count} were asked for"
        )
    return DEFAULT_CHANNEL_ORDER[:count]


def check_sim_channels(names: Sequence[str]) -> tuple[SimChannel, ...]:
    """The simulated channels called ``names`` (checked as :func:`check_channels` does).

    Raises:
        ValueError: bad or unknown names.
    """
    return tuple(sim_channel(name) for name in check_channels(names))
