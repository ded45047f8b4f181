"""bioimage.io model packages (spec 0.5) of published model versions (issue 17).

A package is a folder (and, on request, the same as a ``.zip``) that bioimage.io tools
(bioimageio.core, deepImageJ, ilastik, the bioimage.io website) can run without mscreen:
``rdf.yaml``, ONNX weights, a test input and output made from simulated fields, and a README
saying what happens before the package's input.

What the package's network takes depends on the model:

* **no SSN step** (``ws == 1``, e.g. hscnn-sim v2): the band construction is fixed
  convolutions, so it lives inside the packaged ONNX graph (:mod:`models.hsm_onnx` in front of
  the classifier): inputs ``normalised`` (N, 1, 220, 300) float32 grey 0..255 and ``mask``.
* **with SSN** (``ws > 1``, e.g. v1): the neighbour selection (top-k over a window) is left out
  of the package, because the ONNX version of it is not bit-identical to serving's (near-tied
  neighbour choices flip, see :func:`models.hsm_onnx.parity`); inputs are the band cube
  ``features`` (N, B, 220, 300) exactly as the service builds it, and ``mask``.

Never in the package, for any model (the README and the rdf description say so): the 8-bit
conversion, QC (exposure, focus), resize to 220 x 300, median denoise and contrast step that
make the normalised image, and the cell mask (connected components and hole filling, which ONNX
cannot express). Nor the model's calibration: ``probability`` is the network's raw P(high); a
calibrated model's map is stated in the rdf's ``config.mscreen.calibration``.

Needs the 'train' extra (torch builds the band graph, onnx joins it to the classifier) and the
'bioimageio' extra (bioimageio.spec builds and validates the description; bioimageio.core tests
the package).
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
import onnx.compose

from models.hsm_onnx import OPSET, export_hsm_onnx
from models.inference import OnnxClassifier
from models.pipeline import FEATURE_VERSION, PipelineConfig, prepare
from models.repository import ModelArtifact

if TYPE_CHECKING:
    from bioimageio.spec.model.v0_5 import ModelDescr
    from bioimageio.spec.summary import ValidationSummary

logger = logging.getLogger(__name__)

FORMATS = ("bioimageio",)
RDF_FILENAME = "rdf.yaml"
WEIGHTS_FILENAME = "weights.onnx"
REFERENCE_DOI = "10.1515/biol-2022-0859"
REFERENCE_TEXT = (
    "Liu M, Du X, Hu J, Liang X, Wang H. Utilization of convolutional neural networks to analyze "
    "microscopic images for high-throughput screening of mesenchymal stem cells."
)
# Simulated fields for the test tensors and the parity check: different wells of one plate.
TEST_WELLS = ("A1", "B2", "C3", "D4", "E5", "F6", "G7", "H8")
TEST_BARCODE = "BIOIMAGEIO-TEST"
_HSM_PREFIX = "hsm/"

InputKind = Literal["normalised", "features"]


class BioimageioUnavailableError(RuntimeError):
    """bioimageio.spec (to write a package) or bioimageio.core (to test one) is not installed."""


@dataclass(frozen=True)
class SimulatedFields:
    """Prepared simulated fields: what the service would feed the model, and what it scores."""

    normalised: npt.NDArray[np.float32]  # (N, 1, H, W) grey 0..255
    features: npt.NDArray[np.float32]  # (N, B, H, W) the band cube serving builds
    mask: npt.NDArray[np.float32]  # (N, 1, H, W) 1 = cell
    wells: tuple[str, ...]


@dataclass(frozen=True)
class ExportedPackage:
    """One written package and how closely it reproduces the service."""

    folder: Path
    rdf_path: Path
    zip_path: Path | None
    input_kind: InputKind
    fields: int  # simulated fields in the parity check
    # max |P(high) package - P(high) service| (the service's uncalibrated output) on those fields
    parity_max_abs_diff: float


def uses_band_graph(config: PipelineConfig) -> bool:
    """Whether the band construction goes into the packaged graph (no SSN step: ``ws == 1``)."""
    return (
        config.ws == 1
        and config.band_source == "filter_bank"
        and (config.intensity == "mean_v_clahe")
    )


def package_graph(classifier_path: Path, config: PipelineConfig) -> onnx.ModelProto:
    """The network the package runs: the classifier, with the band graph in front when the
    model has no SSN step (inputs ``normalised``, ``mask``), else the classifier as published
    (inputs ``features``, ``mask``). Outputs ``logit_map``, ``probability``; the classifier's
    metadata (pipeline config, feature version, threshold) is kept."""
    classifier = onnx.load(str(classifier_path))
    if not uses_band_graph(config):
        return classifier
    with tempfile.TemporaryDirectory(prefix="mscreen-hsm-") as scratch:
        bands = onnx.load(str(export_hsm_onnx(config, Path(scratch) / "hsm.onnx")))
    # Prefix the band graph's names so none can clash with the classifier's, but keep its
    # input name: the package's tensor ids are the graph's input names.
    bands = onnx.compose.add_prefix(bands, _HSM_PREFIX, rename_inputs=False)
    if bands.ir_version != classifier.ir_version:
        bands.ir_version = classifier.ir_version
    merged = onnx.compose.merge_models(
        bands,
        classifier,
        io_map=[(f"{_HSM_PREFIX}features", "features")],
        outputs=["logit_map", "probability"],
        doc_string="mscreen: filter-bank bands (models.hsm_onnx) + classifier",
    )
    del merged.metadata_props[:]
    for entry in classifier.metadata_props:
        merged.metadata_props.append(onnx.StringStringEntryProto(key=entry.key, value=entry.value))
    merged.metadata_props.append(
        onnx.StringStringEntryProto(key="bioimageio_input", value="normalised")
    )
    onnx.checker.check_model(merged, full_check=True)
    return merged


def simulated_fields(
    config: PipelineConfig, count: int = 4, *, seed: int = 3, objective: str = "40x"
) -> SimulatedFields:
    """``count`` simulated phase-contrast fields through :func:`models.pipeline.prepare`, as the
    service prepares a scan's frames (fields QC excludes are skipped)."""
    from hardware.sim import SimulationConfig, render_field

    sim = SimulationConfig(seed=seed)
    normalised: list[np.ndarray] = []
    features: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    wells: list[str] = []
    for well in TEST_WELLS:
        if len(wells) == count:
            break
        x, y = sim.plate.well_center_um(well)
        prepared = prepare(
            render_field(sim, TEST_BARCODE, well, x, y, objective), config, bit_depth=sim.bit_depth
        )
        if prepared.features is None or prepared.normalised is None or prepared.mask is None:
            continue
        normalised.append(prepared.normalised[None].astype(np.float32))
        features.append(prepared.features)
        masks.append(prepared.mask[None].astype(np.float32))
        wells.append(well)
    if len(wells) < count:
        raise ValueError(f"only {len(wells)} of {len(TEST_WELLS)} simulated fields passed QC")
    return SimulatedFields(np.stack(normalised), np.stack(features), np.stack(masks), tuple(wells))


def _run(graph_path: Path, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    logit_map, probability = session.run(["logit_map", "probability"], inputs)
    return np.asarray(logit_map, np.float32), np.asarray(probability, np.float32)


def _import_spec() -> Any:
    try:
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        raise BioimageioUnavailableError(
            "writing a bioimage.io package needs the 'bioimageio' extra: "
            f"pip install 'mscreen[bioimageio]' ({exc})"
        ) from exc
    return v0_5


def export_bioimageio(
    artifact: ModelArtifact,
    output: Path,
    *,
    zip_package: bool = False,
    fields: int = 4,
    license_id: str | None = None,
    authors: tuple[str, ...] = (),
) -> ExportedPackage:
    """Write ``artifact`` as a bioimage.io package folder ``output`` (and ``output``.zip).

    The test input and output are ``fields`` simulated fields; the same fields, scored by the
    service's own path (:func:`models.pipeline.prepare` + :meth:`OnnxClassifier.predict`),
    give the parity figure. ``license_id`` (an SPDX id) and ``authors`` are written only when
    given: the published model does not record them, and the package must not invent them.

    Raises:
        BioimageioUnavailableError: bioimageio.spec is not installed.
        FileExistsError: ``output`` exists and is not an empty folder.
        ValueError: a model that takes acquired channels (not supported yet), or
            bioimageio.spec refuses the description (the message says why).
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} exists and is not an empty folder")
    v0_5 = _import_spec()
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    classifier = OnnxClassifier(artifact.model_path, providers="cpu")
    config = classifier.pipeline_config
    if config.band_source == "channels":
        # The test fields come from the single-frame simulator; a multi-channel model would
        # need its channels rendered (and a per-channel input description).
        raise ValueError(
            f"{artifact.label} takes acquired channels (band_source='channels'): "
            "not exportable as a bioimage.io package yet"
        )
    card = artifact.card()
    kind: InputKind = "normalised" if uses_band_graph(config) else "features"
    data = simulated_fields(config, fields)
    want, _ = classifier.predict(data.features, data.mask, calibrated=False)
    with tempfile.TemporaryDirectory(prefix="mscreen-bioimageio-") as scratch:
        staging = Path(scratch)
        weights = staging / WEIGHTS_FILENAME
        onnx.save(package_graph(artifact.model_path, config), str(weights))
        image = data.normalised if kind == "normalised" else data.features
        logit_map, probability = _run(weights, {kind: image, "mask": data.mask})
        parity = float(np.abs(probability - want).max())
        logger.info(
            "%s: package P(high) vs service on %d simulated fields: max abs diff %.3g",
            artifact.label,
            fields,
            parity,
        )
        tensors = {
            kind: image,
            "mask": data.mask,
            "logit_map": logit_map,
            "probability": probability,
        }
        for name, array in tensors.items():
            np.save(staging / f"test_{name}.npy", array)
        intended_use = str(card.get("intended_use") or "")
        (staging / "README.md").write_text(
            readme(artifact, config, kind, parity, data.wells, intended_use)
        )
        descr = build_description(
            v0_5, artifact, card, classifier, kind, staging, logit_map.shape, license_id, authors
        )
        output.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # bioimageio.spec 0.5.12 leaves the files it hashes open (a ResourceWarning each).
            warnings.simplefilter("ignore", ResourceWarning)
            save_bioimageio_package_as_folder(descr, output_path=output)
            zip_path = None
            if zip_package:
                zip_path = output.with_suffix(".zip")
                save_bioimageio_package(descr, output_path=zip_path)
    return ExportedPackage(output, output / RDF_FILENAME, zip_path, kind, fields, parity)


def build_description(
    v0_5: Any,
    artifact: ModelArtifact,
    card: dict[str, Any],
    classifier: OnnxClassifier,
    kind: InputKind,
    staging: Path,
    logit_shape: tuple[int, ...],
    license_id: str | None,
    authors: tuple[str, ...],
) -> ModelDescr:
    """The spec 0.5 description of the files in ``staging``, validated by bioimageio.spec."""
    config = classifier.pipeline_config
    batch = v0_5.BatchAxis()

    def space(axis: str, size: int, *, output: bool = False) -> Any:
        cls = v0_5.SpaceOutputAxis if output else v0_5.SpaceInputAxis
        return cls(id=v0_5.AxisId(axis), size=size)

    def channel(*names: str) -> Any:
        return v0_5.ChannelAxis(channel_names=[v0_5.Identifier(n) for n in names])

    def test_file(name: str) -> Any:
        return v0_5.FileDescr(source=staging / f"test_{name}.npy")

    grid = [space("y", config.height), space("x", config.width)]
    if kind == "normalised":
        image = v0_5.InputTensorDescr(
            id=v0_5.TensorId("normalised"),
            description="grey 0..255 after mscreen's normalise (mean V -> 130, resize, median, "
            "CLAHE); not raw camera data",
            axes=[batch, channel("grey"), *grid],
            test_tensor=test_file("normalised"),
            data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 255.0)),
        )
    else:
        image = v0_5.InputTensorDescr(
            id=v0_5.TensorId("features"),
            description="mscreen's band cube (filter bank, weighted-mean filter, SSN mean), "
            "as models.pipeline.prepare builds it",
            axes=[batch, channel(*config.band_names()), *grid],
            test_tensor=test_file("features"),
            data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        )
    mask = v0_5.InputTensorDescr(
        id=v0_5.TensorId("mask"),
        description="cell mask, 1 = cell (mscreen's foreground_mask); P(high) is pooled over it",
        axes=[batch, channel("cell"), *grid],
        test_tensor=test_file("mask"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    outputs = [
        v0_5.OutputTensorDescr(
            id=v0_5.TensorId("logit_map"),
            description="per-location logit of high functionality (before mask pooling)",
            axes=[
                batch,
                channel("logit_high"),
                space("y", int(logit_shape[2]), output=True),
                space("x", int(logit_shape[3]), output=True),
            ],
            test_tensor=test_file("logit_map"),
            data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        ),
        v0_5.OutputTensorDescr(
            id=v0_5.TensorId("probability"),
            description="P(high functionality) per image, the network's raw (uncalibrated) output",
            axes=[batch],
            test_tensor=test_file("probability"),
            data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        ),
    ]
    extra: dict[str, Any] = {}
    if license_id is not None:
        extra["license"] = v0_5.LicenseId(license_id)
    if authors:
        extra["authors"] = [v0_5.Author(name=name) for name in authors]
    metrics = card.get("metrics", {}).get("test", {})
    descr = v0_5.ModelDescr(
        name=f"mscreen {artifact.name} v{artifact.version}",
        description=description(artifact, kind),
        cite=[v0_5.CiteEntry(text=REFERENCE_TEXT, doi=v0_5.Doi(REFERENCE_DOI))],
        documentation=v0_5.FileDescr(source=staging / "README.md"),
        tags=["mesenchymal-stem-cells", "phase-contrast", "classification", "2d", "onnx"],
        inputs=[image, mask],
        outputs=outputs,
        weights=v0_5.WeightsDescr(
            onnx=v0_5.OnnxWeightsDescr(
                source=staging / WEIGHTS_FILENAME,
                opset_version=OPSET,
                comment=(
                    "band graph (models.hsm_onnx) + classifier in one graph"
                    if kind == "normalised"
                    else "the published classifier graph, unchanged"
                ),
            )
        ),
        config=v0_5.Config(
            mscreen={
                "model": artifact.name,
                "version": artifact.version,
                "input": kind,
                "feature_version": FEATURE_VERSION,
                "pipeline": config.to_dict(),
                "threshold": classifier.threshold,
                "calibration": classifier.calibration.to_dict(),
                "intended_use": card.get("intended_use"),
                "test_metrics": {
                    key: metrics[key] for key in ("n", "accuracy", "auc") if key in metrics
                },
            }
        ),
        **extra,
    )
    return descr


def description(artifact: ModelArtifact, kind: InputKind) -> str:
    """The rdf's one-paragraph description, honest about the steps outside the package."""
    takes = (
        "a normalised grey image (the band construction is inside the ONNX graph)"
        if kind == "normalised"
        else "mscreen's band cube (its construction is not in the package)"
    )
    return (
        f"mscreen {artifact.name} v{artifact.version}: classifies a phase-contrast field of "
        f"mesenchymal stem cells as high or low functionality (CD73 and CD90 > 95 %). Takes "
        f"{takes} and a cell mask. NOT in the package: 8-bit conversion, QC, resize to "
        "220 x 300, median denoise, contrast (CLAHE), the cell mask, the calibration (see "
        "README). Trained on SIMULATED plates only: not validated on real MSC images."
    )


def readme(
    artifact: ModelArtifact,
    config: PipelineConfig,
    kind: InputKind,
    parity: float,
    wells: tuple[str, ...],
    intended_use: str,
) -> str:
    """The package's README.md (the rdf's ``documentation``)."""
    h, w, bands = config.height, config.width, config.band_names()
    if kind == "normalised":
        inputs = (
            f"* `normalised` (N, 1, {h}, {w}) float32, grey levels 0..255: the output of "
            "`models.pipeline.normalise`. The band construction (filter bank, weighted-mean "
            "filter; this model has no SSN step) runs inside `weights.onnx`."
        )
    else:
        inputs = (
            f"* `features` (N, {len(bands)}, {h}, {w}) float32: the model features of "
            f"`models.pipeline.prepare` (bands {', '.join(bands)}; pipeline "
            f"band_source={config.band_source}, intensity={config.intensity}, WS = "
            f"{config.ws}, K = {config.k}). Their construction is not in the package"
            + (
                ": the SSN step's ONNX version is not bit-identical to serving's."
                if config.ws > 1
                else "."
            )
        )
    return f"""# mscreen {artifact.name} v{artifact.version}

Classifies one phase-contrast field of mesenchymal stem cells as high or low functionality.
The rdf's `config.mscreen` holds the full pipeline configuration the model was trained with.

## Inputs

{inputs}
* `mask` (N, 1, {h}, {w}) float32 in [0, 1], 1 = cell: `models.pipeline.foreground_mask`.

## Outputs

* `logit_map` (N, 1, h', w'): per-location logits of "high", before pooling.
* `probability` (N,): P(high), the logit map pooled over the mask: the network's raw output.
  The service applies the model's calibration (`config.mscreen.calibration`) after it and
  calls "high" at P >= `config.mscreen.threshold`.

## Not in this package

These steps happen before the inputs, in mscreen (`models/pipeline/`), and a user of this
package must reproduce them: 8-bit conversion; QC (overexposed mean V > {config.max_mean_v:g},
nearly black, focus); normalisation (mean V -> {config.target_mean_v:g}, resize to {h} x {w}
rows x columns, median {config.median_ksize} x {config.median_ksize}, contrast
{config.contrast}); the cell mask (local contrast, opening, small objects dropped, holes
filled). Images prepared another way are outside what the network was trained on.

## Validation

The test tensors are {len(wells)} simulated fields (wells {", ".join(wells)} of a simulated
plate) prepared by mscreen; on them the package's P(high) differs from the service's by at
most {parity:.3g}. Intended use: {intended_use or "not stated in the model card."}
"""


def run_bioimageio_test(rdf_path: Path) -> ValidationSummary:
    """bioimageio.core's own test of a package (format validation, then the test tensors
    through its ONNX backend). Raises BioimageioUnavailableError without bioimageio.core."""
    try:
        from bioimageio.core import test_model
    except ImportError as exc:
        raise BioimageioUnavailableError(
            "testing a bioimage.io package needs the 'bioimageio' extra: "
            f"pip install 'mscreen[bioimageio]' ({exc})"
        ) from exc
    return test_model(str(rdf_path))


def summary_json(summary: ValidationSummary) -> str:
    """A short JSON of a test summary: status and the failing details."""
    failed = [
        {"name": d.name, "errors": [e.msg for e in d.errors]}
        for d in summary.details
        if d.status == "failed"
    ]
    return json.dumps({"status": summary.status, "failed": failed})
