"""Where acquired frames go on disk: one OME-Zarr HCS plate per scan, with a SHA-256 per field.

Each scan is a plate in the OME-NGFF high-content-screening layout, so that ``ome_zarr.reader``
(and so napari's ome-zarr plugin) reads it back. Plate and well metadata go through ome-zarr's
writer; a field's arrays and multiscales metadata are written with zarr directly, exactly as
ome-zarr's ``write_image`` (local-mean pyramid) would write them, at a fraction of its cost::

    <root>/<barcode>/scan-<scan_id>.ome.zarr/     plate: rows A-H, columns 1-12
        B/7/                                      well B7: lists its fields
            0/                                    field 0: an image (multiscales)
                s0    (H, W) full resolution, as acquired
                s1    (H/2, W/2) 2x2 mean, for overviews

Multi-channel fields (an (H, W, C) frame from a scan through several channels) are stored
channel-first as NGFF wants them: axes (c, y, x), s0 (C, H, W), s1 (C, H/2, W/2), plus an
``omero`` block naming each channel (``AcquiredField.channel_names``) with a display window
over the camera's bit depth, so napari shows them as named channels. :meth:`ImageStore.load`
gives them back channels-last, (H, W, C), as the pipeline takes them. Single-channel fields are
written exactly as before (axes (y, x), no omero block).

Format: OME-NGFF 0.5 on zarr v3 by default (what ome-zarr 0.18 writes and reads by default);
``ngff_version="0.4"`` writes NGFF 0.4 on zarr v2 for viewers that do not read 0.5 yet.

Coordinates: spatial axes are (y, x) in micrometres (a channel axis has scale 1). Each level's
``scale`` is its pixel size in um, and its ``translation`` puts pixel (0, 0)'s centre at its
stage position in um (the field's centre is at the stage position the microscope reported;
image x runs along stage x, image y along stage y, as in :mod:`hardware.plate`).

The plate lists only wells that have at least one stored field, and a well lists only fields
that are stored, so that a partial, failed or resumed scan always reads back (ome-zarr's plate
reader opens the first listed well and fails if it is missing). The plate's row and column
lists always name the whole 96-well grid.

Checksums: :attr:`StoredImage.sha256` is the SHA-256 of the full-resolution pixels, C-order,
little-endian, in the acquired dtype (uint16 from our cameras; uint8 is kept as uint8), i.e.
``hashlib.sha256(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()).hexdigest()``
where ``a = zarr.open_group(path)["s0"][...]`` (for multi-channel fields: the stored (C, H, W)
array): anyone can check it from the zarr data alone.

Crash safety: zarr's local store writes every file (chunk or metadata) to a temporary name and
renames it, so no file is ever half-written (nothing is fsynced: a power cut can lose the last
writes, as it can the database's). A field's group metadata is written after its arrays, a
field before its well lists it, and a well before the plate lists it; re-saving a field at the
same path replaces it whole.

Attempts: the scan worker writes a well's fields *before* the transaction that records them
(:mod:`app.worker`), with ``list_in_plate=False``, and lists them (:meth:`ImageStore.publish_well`)
only once they are committed. A worker that took a scan over from another (whose lease ran
out) writes under per-attempt field paths, ``<field index>t<attempt>`` (e.g. ``0t3fa9c2d1``,
alphanumeric as NGFF wants field paths), so a stalled predecessor that still writes can never
overwrite a field someone committed; the plain ``<field index>`` path is only ever written by
the scan's first claim. A crash between the write and the commit leaves an *orphan*: a field
on disk with no ``images`` row. :meth:`ImageStore.reconcile` removes orphans and rewrites the
well and plate listings from the recorded fields; it never removes a recorded field.

Codec: arrays written since issue 16 use blosc (zstd, level 1, byte shuffle): ~1 ms to encode
a 528 x 720 uint16 frame against ~6 ms for zarr's default zstd level 0, and smaller files
(1.66x against 1.43x on simulated frames). The codec is named in each array's metadata, so
plates written earlier (zstd) read back unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import zarr
from ome_zarr.format import Format, FormatV04, FormatV05
from ome_zarr.writer import (
    write_plate_metadata,
    write_well_metadata,
)
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from hardware.microscope import MAX_CHANNELS, AcquiredField
from hardware.plate import SBS_96, PlateGeometry, row_name

logger = logging.getLogger(__name__)

NgffVersion = Literal["0.4", "0.5"]

_AXES = ("y", "x")
_CHANNEL_AXES = ("c", "y", "x")
_UNITS = {"y": "micrometer", "x": "micrometer"}
# Largest zarr chunk edge, in pixels: a typical frame (528 x 720 uint16, ~0.75 MB) is one chunk
# per level, as it is always read whole; larger cameras are tiled.
_CHUNK_PX = 1024
_LEVELS = 2  # s0 as acquired, s1 binned 2 x 2
# This service's own attributes of a field group (beside NGFF's "ome"): {"bit_depth": 12}.
_OWN_ATTRS = "mscreen"
# A field group's name: its index, and for a takeover's attempt "t" and the attempt's token.
_FIELD_NAME = re.compile(r"^(\d+)(?:t([0-9a-z]+))?$")
_ATTEMPT = re.compile(r"^[0-9a-z]{1,32}$")


class CorruptImageError(ValueError):
    """A stored image that cannot be read back as written; the message says why, not where."""


@dataclass(frozen=True)
class StoredImage:
    """Where one field went: its OME-Zarr image group and the SHA-256 of its pixels."""

    path: str
    sha256: str


def pixel_sha256(image: np.ndarray) -> str:
    """SHA-256 (hex) of a frame's pixels: C-order, little-endian, in the frame's own dtype."""
    little_endian = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))
    return hashlib.sha256(little_endian.tobytes()).hexdigest()


class ImageStore:
    """One OME-Zarr HCS plate per scan under ``root/<barcode>/scan-<id>.ome.zarr``.

    Args:
        root: folder holding every plate.
        plate: the plate's geometry (row and column names of the HCS grid).
        ngff_version: "0.5" (zarr v3, default) or "0.4" (zarr v2).
    """

    def __init__(
        self,
        root: Path,
        *,
        plate: PlateGeometry = SBS_96,
        ngff_version: NgffVersion = "0.5",
    ) -> None:
        self.root = Path(root)
        self.plate = plate
        self._fmt: Format = FormatV05() if ngff_version == "0.5" else FormatV04()
        self._rows = [row_name(r) for r in range(plate.rows)]
        self._columns = [str(c + 1) for c in range(plate.columns)]

    def plate_path(self, barcode: str, scan_id: int) -> Path:
        return self.root / _safe(barcode) / f"scan-{scan_id}.ome.zarr"

    def save(
        self,
        barcode: str,
        scan_id: int,
        field: AcquiredField,
        *,
        fields_per_well: int,
        attempt: str | None = None,
        list_in_plate: bool = True,
    ) -> StoredImage:
        """Write one field into its scan's plate and return its image group path and checksum.

        ``fields_per_well`` is the scan's planned fields per well (the plate's field count).
        ``field.image`` is (H, W), or (H, W, C) with 2 <= C <= :data:`MAX_CHANNELS` channels
        (stored as (C, H, W), see the module docstring); (H, W, 1) is stored as (H, W).

        ``attempt`` (lowercase alphanumeric): write under the per-attempt field path
        ``<index>t<attempt>`` instead of ``<index>`` (see the module docstring). With
        ``list_in_plate=False`` only the field's own group is written: its well and plate
        do not list it until :meth:`publish_well` (the worker lists only committed fields).

        Raises ValueError for another shape, a dtype other than uint8/uint16, a field index
        outside the plan, or a malformed ``attempt``.
        """
        image = _stored_pixels(field)
        if not 0 <= field.field_index < fields_per_well:
            raise ValueError(
                f"{field.well}: field index {field.field_index} outside 0..{fields_per_well - 1}"
            )
        if attempt is not None and not _ATTEMPT.match(attempt):
            raise ValueError(f"attempt {attempt!r} is not 1-32 lowercase letters or digits")
        well_path = self._well_path(field.well)
        field_path = str(field.field_index) + (f"t{attempt}" if attempt else "")
        plate_path = self.plate_path(barcode, scan_id)
        self._check_plate_format(plate_path)
        field_dir = plate_path / well_path / field_path
        if field_dir.exists():
            # A re-saved field is replaced whole (stale levels and chunks included). Only its
            # own writer ever writes this path (see the module docstring).
            shutil.rmtree(field_dir)
        self._write_field(
            field_dir, field, image, name=f"{barcode} {field.well} field {field_path}"
        )
        stored = StoredImage(path=str(field_dir), sha256=pixel_sha256(image))
        if list_in_plate:
            plate = self._open_plate(plate_path)
            well = plate.require_group(well_path)
            write_well_metadata(
                well,
                [{"path": p, "acquisition": scan_id} for p in _stored_fields(well)],
                fmt=self._fmt,
            )
            self._list_well(plate, well_path, barcode, scan_id, fields_per_well)
        return stored

    def publish_well(
        self,
        barcode: str,
        scan_id: int,
        well_name: str,
        field_paths: Iterable[str],
        *,
        fields_per_well: int,
    ) -> None:
        """List a well's committed fields (image group paths from :meth:`save`) in its well's
        and the plate's metadata: the well lists exactly these fields, in field order."""
        plate = self._open_plate(self.plate_path(barcode, scan_id))
        well_path = self._well_path(well_name)
        names = _field_order(Path(p).name for p in field_paths)
        well = plate.require_group(well_path)
        write_well_metadata(
            well, [{"path": name, "acquisition": scan_id} for name in names], fmt=self._fmt
        )
        self._list_well(plate, well_path, barcode, scan_id, fields_per_well)

    @staticmethod
    def remove_field(path: str | Path) -> bool:
        """Delete the image group at ``path`` (a field nobody recorded); False if absent."""
        if not Path(path).is_dir():
            return False
        shutil.rmtree(path)
        return True

    def reconcile(
        self,
        barcode: str,
        scan_id: int,
        recorded: Iterable[str | Path],
        *,
        fields_per_well: int,
        dry_run: bool = False,
    ) -> list[str]:
        """Remove the fields of a scan's plate that are not in ``recorded`` (the paths of its
        ``images`` rows) and rewrite its well and plate listings to list exactly the recorded
        fields that are on disk. Returns the orphans' paths (removed unless ``dry_run``).

        Only directories named like fields (``<index>`` or ``<index>t<attempt>``) under a well
        of the plate's grid are candidates; a recorded field is never removed. A plate left
        with no field at all is removed whole (a scan that recorded nothing has no plate).
        """
        plate_path = self.plate_path(barcode, scan_id)
        if not plate_path.is_dir():
            return []
        keep = {Path(p).resolve() for p in recorded}
        orphans: list[Path] = []
        kept: dict[str, list[str]] = {}
        for row in self._rows:
            for column in self._columns:
                well_dir = plate_path / row / column
                if not well_dir.is_dir():
                    continue
                for child in well_dir.iterdir():
                    if not (child.is_dir() and _FIELD_NAME.match(child.name)):
                        continue
                    if child.resolve() in keep:
                        kept.setdefault(f"{row}/{column}", []).append(child.name)
                    else:
                        orphans.append(child)
        for orphan in orphans:
            logger.info(
                "%s orphan field %s (no images row: written, never committed)",
                "would remove" if dry_run else "removing",
                orphan,
            )
        if dry_run:
            return [str(o) for o in orphans]
        for orphan in orphans:
            shutil.rmtree(orphan)
        if not kept:
            logger.info("removing plate %s: no recorded field left", plate_path)
            shutil.rmtree(plate_path)
            return [str(o) for o in orphans]
        plate = self._open_plate(plate_path)
        for well_path, names in kept.items():
            well = plate.require_group(well_path)
            listed = [i.get("path") for i in (_ome_attrs(well).get("well") or {}).get("images", [])]
            if listed != _field_order(names):
                write_well_metadata(
                    well,
                    [{"path": n, "acquisition": scan_id} for n in _field_order(names)],
                    fmt=self._fmt,
                )
        for row in self._rows:
            for column in self._columns:
                well_dir = plate_path / row / column
                if well_dir.is_dir() and f"{row}/{column}" not in kept:
                    shutil.rmtree(well_dir)  # only its metadata (and orphans) were there
        count = max([fields_per_well, *(len(names) for names in kept.values())])
        self._write_plate_listing(plate, set(kept), barcode, scan_id, count)
        return [str(o) for o in orphans]

    @staticmethod
    def load(path: str | Path, *, sha256: str | None = None) -> np.ndarray:
        """The full-resolution frame of the image group at ``path``: (H, W), or (H, W, C)
        channels-last for a multi-channel field (stored (C, H, W); see :meth:`channel_names`).

        With ``sha256`` (the checksum recorded when the field was written) the pixels read are
        checked against it. That is the only reliable check that every chunk is still there:
        zarr reads a missing chunk file as the fill value (a black tile) without an error, and
        a chunk of pure fill value is legitimately never written, so counting chunk files
        cannot tell the two apart. Hashing costs ~0.7 ms on a 528 x 720 uint16 frame (~7 % of
        the read).

        Raises FileNotFoundError if nothing is stored at ``path``, CorruptImageError if what is
        stored there cannot be read as an image or (with ``sha256``) its pixels are not the
        ones written.
        """
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no image stored at {path}")
        try:
            group = zarr.open_group(str(path), mode="r")
            multiscales = _ome_attrs(group).get("multiscales")
            if not multiscales:
                raise CorruptImageError("no OME-Zarr multiscales metadata")
            array = group[multiscales[0]["datasets"][0]["path"]]
            if not isinstance(array, zarr.Array):
                raise CorruptImageError("its full-resolution level is not an array")
            stored = np.asarray(array[...])
            axes = [axis.get("name") for axis in multiscales[0].get("axes", [])]
        except CorruptImageError:
            raise
        except Exception as exc:  # zarr and its codecs raise many types for damaged files
            logger.warning("stored image %s cannot be read: %s: %s", path, type(exc).__name__, exc)
            raise CorruptImageError(f"unreadable metadata or chunk ({type(exc).__name__})") from exc
        if sha256 is not None and pixel_sha256(stored) != sha256.lower():
            logger.warning("stored image %s does not match its recorded SHA-256", path)
            raise CorruptImageError(
                "its pixels do not match the SHA-256 recorded when it was written "
                "(a chunk is missing or was changed)"
            )
        if list(axes) == list(_CHANNEL_AXES) and stored.ndim == 3:
            return np.ascontiguousarray(stored.transpose(1, 2, 0))
        if stored.ndim != 2:
            raise CorruptImageError(f"axes {axes} with a {stored.ndim}-D array are not an image")
        return stored

    @staticmethod
    def channel_names(path: str | Path) -> tuple[str, ...]:
        """Names of the channels of the image group at ``path``, in the order of the last axis
        of :meth:`load` (its ``omero`` channel labels); () for a single-channel field.

        Raises FileNotFoundError if nothing is stored at ``path``, CorruptImageError if its
        metadata cannot be read.
        """
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no image stored at {path}")
        try:
            attrs = _ome_attrs(zarr.open_group(str(path), mode="r"))
        except Exception as exc:  # zarr raises many types for damaged metadata
            raise CorruptImageError(f"unreadable metadata ({type(exc).__name__})") from exc
        channels = (attrs.get("omero") or {}).get("channels") or []
        return tuple(str(ch.get("label", f"channel_{i}")) for i, ch in enumerate(channels))

    @staticmethod
    def bit_depth(path: str | Path) -> int | None:
        """The significant bits recorded when the field at ``path`` was written (None: not
        recorded, i.e. the dtype's full range or a plate written before it was recorded).

        Raises FileNotFoundError if nothing is stored at ``path``, CorruptImageError if its
        metadata cannot be read.
        """
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no image stored at {path}")
        try:
            own = zarr.open_group(str(path), mode="r").attrs.asdict().get(_OWN_ATTRS) or {}
        except Exception as exc:  # zarr raises many types for damaged metadata
            raise CorruptImageError(f"unreadable metadata ({type(exc).__name__})") from exc
        value = own.get("bit_depth") if isinstance(own, dict) else None
        return int(value) if isinstance(value, int) and 8 <= value <= 16 else None

    @classmethod
    def verify(cls, path: str | Path, sha256: str) -> bool:
        """True if the stored frame at ``path`` still has checksum ``sha256`` (False if it is
        damaged or changed).

        Raises FileNotFoundError if the image is missing (that is not a checksum mismatch).
        """
        try:
            cls.load(path, sha256=sha256)
        except CorruptImageError:
            return False
        return True

    # -- internals ------------------------------------------------------------------------------
    def _well_path(self, well_name: str) -> str:
        row, column = self.plate.parse(well_name)
        return f"{self._rows[row]}/{self._columns[column]}"

    def _check_plate_format(self, path: Path) -> None:
        """ValueError if the plate at ``path`` exists in the other zarr format (a plate started
        in one NGFF version is not continued in the other); two stat calls, no zarr open."""
        v3, v2 = (path / "zarr.json").is_file(), (path / ".zgroup").is_file()
        found = 3 if v3 else 2 if v2 else None
        if found is not None and found != self._fmt.zarr_format:
            raise ValueError(
                f"{path} is zarr v{found}, "
                f"this store writes NGFF {self._fmt.version} (zarr v{self._fmt.zarr_format})"
            )

    def _open_plate(self, path: Path) -> zarr.Group:
        try:
            group = zarr.open_group(str(path), mode="r+")
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            logger.info("new OME-Zarr plate %s (NGFF %s)", path, self._fmt.version)
            group = zarr.open_group(str(path), mode="a", zarr_format=self._fmt.zarr_format)
        if group.metadata.zarr_format != self._fmt.zarr_format:
            raise ValueError(
                f"{path} is zarr v{group.metadata.zarr_format}, "
                f"this store writes NGFF {self._fmt.version} (zarr v{self._fmt.zarr_format})"
            )
        return group

    def _write_field(
        self, field_dir: Path, field: AcquiredField, image: np.ndarray, *, name: str
    ) -> None:
        """Write ``image`` ((H, W), or (C, H, W) for a multi-channel field) with its pyramid
        and metadata as the image group ``field_dir`` (arrays first, group metadata last).

        The arrays and metadata are those ome-zarr's ``write_image`` (``Methods.LOCAL_MEAN``)
        writes (file for file, checked against it), but written with zarr directly:
        ``write_image`` builds the pyramid as a dask graph and stores it through dask's threads
        and zarr's event loop, ~40-50 ms a 528 x 720 uint16 frame inside the worker's per-well
        transaction, against ~15-20 ms for the same files written from numpy (most of it then
        zarr's own per-array overhead and the zstd encode). Since issue 16: blosc zstd-1 (see
        the module docstring) and the group's metadata written once, last, from zarr's own
        serialisation, with no parent group opened: ~7 ms a frame.
        """
        multi = image.ndim == 3
        axes = _CHANNEL_AXES if multi else _AXES
        zarr_format = self._fmt.zarr_format
        pyramid = _local_mean_pyramid(image, _LEVELS)
        # A store rooted at the field group: zarr then checks (and would create) no parent
        # group up to the plate (~2-3 ms a level); the well and plate are listed separately.
        store = LocalStore(field_dir)
        for level, data in enumerate(pyramid):
            chunks = _chunks(image.shape, level)
            # overwrite=True deletes the level's old array (every chunk) before writing, so a
            # re-saved field (resume after a crash) is replaced in place, stale chunks included.
            zarr.create_array(
                store,
                name=f"s{level}",
                data=data,
                chunks=chunks,
                # zarr leaves out a chunk that is all fill value (its default), at the cost of
                # a slow comparison per chunk (~3 ms on a 528 x 720 frame); a quick any() finds
                # whether any is, and only then is that check needed: same files, either way.
                config={"write_empty_chunks": not _has_empty_chunk(data, chunks)},
                compressors=_compressor(zarr_format),
                zarr_format=zarr_format,
                # As ome-zarr (via dask) names them: dimension names exist in zarr v3 only, and
                # NGFF 0.4 wants "/"-separated chunk keys.
                dimension_names=list(axes) if zarr_format == 3 else None,
                chunk_key_encoding=({"name": "v2", "separator": "/"} if zarr_format == 2 else None),
                overwrite=True,
            )
        multiscales: dict[str, Any] = {
            "datasets": _datasets(
                [data.shape for data in pyramid],
                axes,
                pixel_um=float(field.pixel_size_um),
                centre_um=(float(field.y_um), float(field.x_um)),
            ),
            "name": name,
            "axes": [_axis(axis) for axis in axes],
        }
        omero = _omero(field.channel_names, image.dtype, field.bit_depth) if multi else None
        attrs: dict[str, Any]
        if self._fmt.version == "0.4":
            # NGFF 0.4: top-level attributes, the version inside each multiscales entry.
            attrs = {"multiscales": [{**multiscales, "version": "0.4"}]}
            if omero is not None:
                attrs["omero"] = omero
        else:
            # NGFF 0.5: everything under "ome" (replaced whole), omero with its own version.
            ome: dict[str, Any] = {"version": self._fmt.version, "multiscales": [multiscales]}
            if omero is not None:
                ome["omero"] = {**omero, "version": self._fmt.version}
            attrs = {"ome": ome}
        if field.bit_depth is not None:
            # The camera's significant bits (a 12-bit camera's uint16 data, an imported 12-bit
            # TIFF): what display and retraining must scale by; NGFF has no field for it.
            attrs[_OWN_ATTRS] = {"bit_depth": int(field.bit_depth)}
        _write_group_metadata(field_dir, attrs, zarr_format)

    def _list_well(
        self, plate: zarr.Group, well_path: str, barcode: str, scan_id: int, fields_per_well: int
    ) -> None:
        """Add ``well_path`` to the plate's metadata (written once per well, idempotently)."""
        current: dict[str, Any] = _ome_attrs(plate).get("plate") or {}
        wells = {w["path"] for w in current.get("wells", [])}
        field_count = max(fields_per_well, int(current.get("field_count", 0)))
        if well_path in wells and current.get("field_count") == field_count:
            return
        wells.add(well_path)
        self._write_plate_listing(plate, wells, barcode, scan_id, field_count)

    def _write_plate_listing(
        self, plate: zarr.Group, wells: set[str], barcode: str, scan_id: int, field_count: int
    ) -> None:
        """Write the plate's metadata listing exactly ``wells`` ("B/7" paths), row-major."""
        write_plate_metadata(
            plate,
            self._rows,
            self._columns,
            sorted(wells, key=lambda path: self.plate.parse(path.replace("/", ""))),
            fmt=self._fmt,
            acquisitions=[
                {"id": scan_id, "name": f"scan-{scan_id}", "maximumfieldcount": field_count}
            ],
            field_count=field_count,
            name=barcode,
        )


def _compressor(zarr_format: int) -> Any:
    """The chunk codec of new arrays (see the module docstring): blosc zstd-1, byte shuffle."""
    if zarr_format == 3:
        return BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
    return numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)


def _write_group_metadata(path: Path, attrs: dict[str, Any], zarr_format: int) -> None:
    """Write the group metadata of ``path`` (zarr.json; or .zgroup and .zattrs) holding
    ``attrs``, each file under a temporary name renamed into place, as zarr's store does."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    metadata = GroupMetadata(attributes=attrs, zarr_format=zarr_format)  # type: ignore[arg-type]
    path.mkdir(parents=True, exist_ok=True)
    for key, buffer in metadata.to_buffer_dict(default_buffer_prototype()).items():
        temporary = path / f".{key}.{os.getpid()}.partial"
        temporary.write_bytes(buffer.to_bytes())
        os.replace(temporary, path / key)


def _field_order(names: Iterable[str]) -> list[str]:
    """Field group names in field order (index, then attempt)."""

    def key(name: str) -> tuple[int, str]:
        match = _FIELD_NAME.match(name)
        return (int(match.group(1)), name) if match else (1 << 30, name)

    return sorted(names, key=key)


def _chunks(shape: tuple[int, ...], level: int) -> tuple[int, ...]:
    """Chunk shape of pyramid level ``level``: the whole level, up to ``_CHUNK_PX`` a side
    (every channel of a (C, H, W) image in the same chunk: a field is read whole)."""
    spatial = tuple(min(-(-n // 2**level), _CHUNK_PX) for n in shape[-2:])
    return (*shape[:-2], *spatial)


def _local_mean_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``image`` and ``levels - 1`` coarser levels, each the local mean of the one before over
    the spatial (last two) axes, bit for bit as ome-zarr's ``Methods.LOCAL_MEAN`` computes it.

    ome-zarr halves each spatial size (``n // 2``, at least 1) and averages blocks of
    ``int(n / (n // 2))`` pixels (2, or 3 for n = 3, 1 for n = 1) with skimage's
    ``downscale_local_mean``: a float64 mean of integers, truncated back to the dtype, and the
    partial block past an odd edge (padded with zeros) cut off. The float64 sum of at most 9
    integers is exact, so that is the integer sum floor-divided by the block size, which is
    what this computes (a non-spatial channel axis is left as it is).
    """
    pyramid = [image]
    for _ in range(1, levels):
        previous = pyramid[-1]
        height, width = previous.shape[-2:]
        out_h, out_w = max(height // 2, 1), max(width // 2, 1)
        block_h, block_w = int(height / out_h), int(width / out_w)
        cropped = previous[..., : out_h * block_h, : out_w * block_w]
        # Strided adds (~10x faster than a reshape and sum over two non-adjacent axes).
        sums = np.zeros((*previous.shape[:-2], out_h, out_w), dtype=np.uint32)
        for dy in range(block_h):
            for dx in range(block_w):
                sums += cropped[..., dy::block_h, dx::block_w]
        sums //= block_h * block_w
        pyramid.append(sums.astype(previous.dtype))
    return pyramid


def _has_empty_chunk(data: np.ndarray, chunks: tuple[int, ...]) -> bool:
    """True if some chunk of ``data`` (chunked by ``chunks``) is all zeros (the fill value)."""
    starts = [range(0, n, c) for n, c in zip(data.shape, chunks, strict=True)]
    return any(
        not data[tuple(slice(i, i + c) for i, c in zip(corner, chunks, strict=True))].any()
        for corner in itertools.product(*starts)
    )


def _datasets(
    shapes: list[tuple[int, ...]],
    axes: tuple[str, ...],
    *,
    pixel_um: float,
    centre_um: tuple[float, float],
) -> list[dict[str, Any]]:
    """NGFF ``datasets`` of a pyramid: each level's pixel size (``scale``, in um; 1 on a
    channel axis) and the position of its pixel (0, 0)'s centre (``translation``).

    Computed in the same float operations, in the same order, as ome-zarr's writer (a level's
    scale is ``full / level`` size times the pixel size, so not exactly 2x for an odd size)
    followed by the stage shift: pixel (0, 0) of s0 goes where the frame's centre is at
    ``centre_um`` (y, x), and each coarser level keeps its own half-pixel offset.
    """
    pixel = {"c": 1.0, "y": pixel_um, "x": pixel_um}
    full = shapes[0]
    scales = [
        [
            full_n / level_n * pixel[axis]
            for full_n, level_n, axis in zip(full, shape, axes, strict=True)
        ]
        for shape in shapes
    ]
    height, width = full[-2:]
    origin = [
        *([0.0] * (len(axes) - 2)),
        centre_um[0] - (height - 1) / 2.0 * pixel_um,
        centre_um[1] - (width - 1) / 2.0 * pixel_um,
    ]
    datasets = []
    for level, scale in enumerate(scales):
        offset = [s / 2 - s0 / 2 for s, s0 in zip(scale, scales[0], strict=True)]
        datasets.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {
                        "type": "translation",
                        "translation": [o + d for o, d in zip(origin, offset, strict=True)],
                    },
                ],
            }
        )
    return datasets


def _axis(name: str) -> dict[str, str]:
    """NGFF axis metadata: a channel axis, or a spatial one in micrometres."""
    if name == "c":
        return {"name": name, "type": "channel"}
    return {"name": name, "type": "space", "unit": _UNITS[name]}


def _stored_pixels(field: AcquiredField) -> np.ndarray:
    """The array to write for ``field``: its (H, W) frame, or its (H, W, C) frame channel-first
    as (C, H, W); (H, W, 1) as (H, W).

    Raises ValueError for any other shape or a dtype other than uint8/uint16.
    """
    image = field.image
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    channels_ok = image.ndim == 3 and 2 <= image.shape[2] <= MAX_CHANNELS
    if (image.ndim != 2 and not channels_ok) or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"{field.well} field {field.field_index}: expected an (H, W) or, with "
            f"2..{MAX_CHANNELS} channels, an (H, W, C) uint8 or uint16 frame, "
            f"got {image.dtype} {image.shape}"
        )
    if image.ndim == 3:
        return np.ascontiguousarray(image.transpose(2, 0, 1))
    return image


def _omero(names: tuple[str, ...], dtype: np.dtype, bit_depth: int | None) -> dict[str, Any]:
    """NGFF's transitional ``omero`` block: one greyscale channel per name, displayed over the
    camera's range (``bit_depth`` bits, else the dtype's).

    Written as ome-zarr's ``Omero`` model writes it (window bounds as floats, its key order),
    so that the stored metadata is what ``write_image(..., omero=...)`` would store."""
    top = float(2 ** (bit_depth or 8 * dtype.itemsize) - 1)
    return {
        "channels": [
            {
                "color": "FFFFFF",
                "window": {"max": top, "min": 0.0, "start": 0.0, "end": top},
                "label": name,
                "active": True,
            }
            for name in names
        ],
        "rdefs": {"model": "greyscale"},
    }


def _ome_attrs(group: zarr.Group) -> dict[str, Any]:
    """A group's OME metadata: under "ome" in NGFF 0.5 (zarr v3), top-level in 0.4."""
    attrs = group.attrs.asdict()
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, dict) else attrs


def _stored_fields(well: zarr.Group) -> list[str]:
    """Field paths under a well whose image metadata is written, in field order."""
    fields = []
    for key, child in well.groups():
        if _FIELD_NAME.match(key) and "multiscales" in _ome_attrs(child):
            fields.append(key)
    return _field_order(fields)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
