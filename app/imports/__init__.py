"""Importing a lab's existing plates: a folder of microscope files in, a classified scan out.

A folder whose file names carry well, field (site), channel and z plane (MetaXpress /
ImageXpress, Operetta / Opera / Harmony, Incucyte, or a user's regular expression), or an
OME-Zarr HCS plate, becomes a plate, a scan whose ``microscope`` is ``"import:<layout>"``,
stored images with their SHA-256 and one classified well result per well, exactly as a scan of
the microscope would leave them: the plates API, the page and ``mscreen train --source
database`` read an import unchanged.

How (one code path with the microscope's scans, not a copy of it): the folder is read by
:class:`FolderScanner`, a :class:`hardware.microscope.PlateScanner` whose "acquisition" reads
each well's files, and the scan runs through the scan worker (:class:`app.worker.ScanWorker`):
the same classification, image store, one transaction per well, lease and outcome. The
import's worker claims its own scan only (never the queue of a microscope), so two imports run
side by side. A failure midway leaves the scan ``failed`` with its error, the wells committed
before it kept; it is never marked completed. A process that dies mid-import leaves a running
scan whose lease expires: the next import marks it failed ("interrupted").

Planning (:func:`plan_import`) reads names and metadata only (and, when no metadata gives the
bit depth, every file's pixels once to find the plate's brightest value); nothing is written,
so it is also the dry run. Problems of the whole folder (a duplicate file, a pattern without a
``well`` group, no image at all) are :class:`ImportLayoutError` (422) before any row is made;
problems of one well (a missing channel, an unreadable file, a channel count the model cannot
take) fail that well only, with the reason in its result.
"""

from __future__ import annotations

from app.imports.layouts import (
    ImportDisabledError,
    ImportLayoutError,
    ImportPathError,
    NameParser,
    OutsideImportRootError,
)
from app.imports.plan import FieldSource, ImportPlan, WellSource, pipeline_problem, plan_import
from app.imports.run import (
    API_MAX_FIELDS,
    FolderScanner,
    ImportContext,
    check_api_size,
    fail_abandoned_imports,
    outcome,
    resolve_folder,
    run_import,
)

__all__ = [
    "API_MAX_FIELDS",
    "FieldSource",
    "FolderScanner",
    "ImportContext",
    "ImportDisabledError",
    "ImportLayoutError",
    "ImportPathError",
    "ImportPlan",
    "NameParser",
    "OutsideImportRootError",
    "WellSource",
    "check_api_size",
    "fail_abandoned_imports",
    "outcome",
    "pipeline_problem",
    "plan_import",
    "resolve_folder",
    "run_import",
]
