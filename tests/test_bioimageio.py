"""bioimage.io export (issue 17): the bundled model versions as spec 0.5 packages, tested by
bioimageio.core's own test, and reproducing the service's P(high) on simulated fields."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner, Result

from cli.common import UserError
from cli.main import cli
from models.repository import BUNDLED_REPOSITORY, ModelRepository

pytest.importorskip("torch", reason="the export builds the band graph with PyTorch ('train')")
pytest.importorskip("onnx", reason="the export joins ONNX graphs ('train' extra)")

from training import bioimageio  # after the skips: needs torch and onnx


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # its parent package is missing
        return False


needs_bioimageio = pytest.mark.skipif(
    not _installed("bioimageio.core"),
    reason="bioimageio.core is not installed (pip install 'mscreen[bioimageio]'; CI has it)",
)
# v2 (served by default): no SSN step, bands inside the graph; v1: SSN, the band cube as input.
EXPECTED_INPUT = {2: "normalised", 1: "features"}
PARITY_TOLERANCE = 1e-4  # P(high), package vs service; measured ~1e-6 for v2, 0 for v1
REPOSITORY = ModelRepository(BUNDLED_REPOSITORY)


@pytest.fixture(scope="module", params=[2, 1], ids=["v2-no-ssn", "v1-ssn"])
def package(request, tmp_path_factory) -> bioimageio.ExportedPackage:
    version = request.param
    if not _installed("bioimageio.spec"):
        pytest.skip("bioimageio.spec is not installed (pip install 'mscreen[bioimageio]')")
    folder = tmp_path_factory.mktemp(f"bioimageio-v{version}") / "package"
    return bioimageio.export_bioimageio(REPOSITORY.get("hscnn-sim", version), folder)


@pytest.mark.slow
@needs_bioimageio
def test_bioimageio_core_test_passes_on_the_exported_bundled_model(package) -> None:
    summary = bioimageio.run_bioimageio_test(package.rdf_path)
    assert summary.status == "passed", bioimageio.summary_json(summary)
    # It really ran the network on the test tensors (not only a format check).
    names = [detail.name for detail in summary.details]
    assert any("Reproduce test outputs" in name for name in names), names


@pytest.mark.slow
@needs_bioimageio
def test_package_reproduces_the_service_and_says_what_it_leaves_out(package) -> None:
    version = int(yaml.safe_load(package.rdf_path.read_text())["config"]["mscreen"]["version"])
    assert package.input_kind == EXPECTED_INPUT[version]
    assert package.fields >= 2
    assert package.parity_max_abs_diff <= PARITY_TOLERANCE

    rdf = yaml.safe_load(package.rdf_path.read_text())
    assert rdf["format_version"].startswith("0.5")
    assert [t["id"] for t in rdf["inputs"]] == [package.input_kind, "mask"]
    assert [t["id"] for t in rdf["outputs"]] == ["logit_map", "probability"]
    assert "NOT in the package" in rdf["description"]
    readme = (package.folder / "README.md").read_text()
    assert "## Not in this package" in readme and "## Validation" in readme
    # The test tensors are simulated fields: a real normalised image, a mask with cells in it.
    image = np.load(package.folder / f"test_{package.input_kind}.npy")
    mask = np.load(package.folder / "test_mask.npy")
    probability = np.load(package.folder / "test_probability.npy")
    assert image.shape[0] == mask.shape[0] == probability.shape[0] == package.fields
    assert image.shape[2:] == mask.shape[2:] == (220, 300)
    assert 0.0 < mask.mean() < 1.0 and image.std() > 0.0
    assert np.all((probability >= 0.0) & (probability <= 1.0))
    if package.input_kind == "normalised":
        assert image.shape[1] == 1 and image.min() >= 0.0 and image.max() <= 255.0


@pytest.mark.slow
def test_band_graph_in_front_of_the_classifier_matches_the_service(tmp_path: Path) -> None:
    """Parity without bioimageio: the joined graph on normalised images vs prepare + predict."""
    import onnx

    from models.inference import OnnxClassifier

    artifact = REPOSITORY.get("hscnn-sim", 2)
    classifier = OnnxClassifier(artifact.model_path, providers="cpu")
    assert bioimageio.uses_band_graph(classifier.pipeline_config)
    graph = tmp_path / "joined.onnx"
    onnx.save(bioimageio.package_graph(artifact.model_path, classifier.pipeline_config), graph)
    fields = bioimageio.simulated_fields(classifier.pipeline_config, 3)
    want, want_map = classifier.predict(fields.features, fields.mask, calibrated=False)
    got_map, got = bioimageio._run(graph, {"normalised": fields.normalised, "mask": fields.mask})
    assert np.abs(got - want).max() <= PARITY_TOLERANCE
    assert got_map.shape == want_map.shape
    assert np.abs(got_map - want_map).max() <= 1e-2 * max(1.0, float(np.abs(want_map).max()))
    # The pipeline config travels with the joined graph, as with every published model.
    keys = {entry.key for entry in onnx.load(str(graph)).metadata_props}
    assert {"pipeline_config", "feature_version", "threshold"} <= keys


def test_ssn_model_keeps_the_band_cube_as_its_input() -> None:
    from models.inference import OnnxClassifier

    config = OnnxClassifier(REPOSITORY.get("hscnn-sim", 1).model_path).pipeline_config
    assert config.ws > 1 and not bioimageio.uses_band_graph(config)


def _export(*args: str) -> Result:
    return CliRunner().invoke(
        cli, ["models", "export", *args, "--repository", str(BUNDLED_REPOSITORY)]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hscnn-sim:9", "--output", "OUT"], "has no version 9"),
        (["no-such-model:1", "--output", "OUT"], "no model named 'no-such-model'"),
        (["hscnn-sim:2", "--output", "OUT", "--format", "torchscript"], "--format must be"),
        (["hscnn-sim:x", "--output", "OUT"], "expected NAME or NAME:VERSION"),
    ],
)
def test_export_refuses_unknown_versions_and_formats(tmp_path, args, message) -> None:
    args = [str(tmp_path / "pkg") if a == "OUT" else a for a in args]
    result = _export(*args)
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "pkg").exists()


def test_export_refuses_a_folder_that_is_not_empty(tmp_path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "keep.txt").write_text("mine")
    result = _export("hscnn-sim:2", "--output", str(tmp_path / "pkg"), "--no-test")
    assert isinstance(result.exception, UserError), result.output
    assert "not an empty folder" in str(result.exception)
    assert (tmp_path / "pkg" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
@needs_bioimageio
def test_cli_exports_and_tests_the_default_model(tmp_path) -> None:
    result = _export("hscnn-sim:2", "--output", str(tmp_path / "pkg"), "--zip")
    assert result.exit_code == 0, result.output
    assert "bioimageio.core test: passed" in result.output
    assert (tmp_path / "pkg" / "rdf.yaml").is_file() and (tmp_path / "pkg.zip").is_file()
