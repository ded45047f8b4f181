"""Calls a lab can act on (models.decision): threshold policies and selective calls on constructed
decision sets with a known answer, the well decision (uncertain, no call, field disagreement),
the ONNX metadata path, the classifier on simulated wells, and what training publishes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.classifier import WellClassifier
from hardware.microscope import ScanPlan, StepScanner
from hardware.sim import SimulatedMicroscope, SimulationConfig
from models import decision, ood
from models.calibration import Calibration
from models.decision import (
    NO_CALL,
    UNCERTAIN,
    CallPolicy,
    DecisionSet,
    ThresholdPolicy,
    decide_well,
    resolve_policy,
)
from models.inference import OnnxClassifier
from models.onnx_export import write_metadata
from models.pipeline import PipelineConfig
from models.repository import BUNDLED_REPOSITORY
from models.selective import risk_controlled_threshold
from training.imagesets import simulated_image_set
from training.jobs import TrainingData, fit_reliability, train_and_publish
from training.trainer import TrainConfig


def _known_set() -> DecisionSet:
    """300 fields: lows at p = 0.1 (100) and 0.45 (50), highs at 0.4 (30) and 0.9 (120).

    Sensitivity + specificity - 1 (J) is 0.667 at t = 0.4, 0.467 at t = 0.45 and 0.8 at
    t = 0.9, so Youden picks 0.9.
    """
    p = [0.1] * 100 + [0.45] * 50 + [0.4] * 30 + [0.9] * 120
    y = [0] * 150 + [1] * 150
    return DecisionSet.of(p, y, source="constructed")


def test_threshold_policies_pick_the_known_thresholds() -> None:
    known = _known_set()
    assert ThresholdPolicy.parse("default").threshold(known, 0.5) == 0.5
    assert ThresholdPolicy.parse("youden").threshold(known, 0.5) == pytest.approx(0.9)
    # Sensitivity: t = 0.9 keeps 120/150 = 0.8 of the highs, t = 0.4 all of them.
    assert ThresholdPolicy.parse("sensitivity:0.6").threshold(known, 0.5) == pytest.approx(0.9)
    assert ThresholdPolicy.parse("sensitivity:0.95").threshold(known, 0.5) == pytest.approx(0.4)
    # Specificity: t = 0.4 (and 0.45) calls 100/150 lows low, t = 0.9 all 150.
    assert ThresholdPolicy.parse("specificity:0.6").threshold(known, 0.5) == pytest.approx(0.4)
    assert ThresholdPolicy.parse("specificity:0.7").threshold(known, 0.5) == pytest.approx(0.9)
    assert ThresholdPolicy.parse("Specificity:1").threshold(known, 0.5) == pytest.approx(0.9)
    assert str(ThresholdPolicy.parse("sensitivity:0.950")) == "sensitivity:0.95"


@pytest.mark.parametrize("text", ["", "youden:0.5", "sensitivity", "x:0.5", "1.5"])
def test_bad_threshold_policies_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="default, youden, sensitivity:S"):
        ThresholdPolicy.parse(text)


@pytest.mark.parametrize(
    "text", ["sensitivity:0", "specificity:1.5", "sensitivity:nan", "sensitivity:1e"]
)
def test_rates_outside_0_1_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate (must be )?in \(0, 1\]"):
        ThresholdPolicy.parse(text)


def test_data_driven_choices_need_a_decision_set() -> None:
    with pytest.raises(ValueError, match="has none"):
        resolve_policy(decision_set=None, threshold_policy="youden")
    with pytest.raises(ValueError, match="selective calls"):
        resolve_policy(decision_set=None, alpha=0.05)
    plain = resolve_policy(decision_set=None)
    assert plain.threshold == 0.5 and plain.selective is None


def test_selective_policy_matches_the_risk_controlled_threshold_at_the_chosen_decision() -> None:
    known = _known_set()
    policy = resolve_policy(decision_set=known, threshold_policy="youden", alpha=0.05)
    expected = risk_controlled_threshold(
        known.probabilities, known.labels, alpha=0.05, delta=0.1, decision=0.9
    )
    assert policy.selective == expected
    # Confidence 0.9 (p 0.1 and 0.9: 220 fields, none wrong at t = 0.9) is certified; adding
    # confidence 0.6 (p 0.4: 30 highs called low) makes 30 errors in 250 calls, which is not.
    assert policy.selective is not None
    assert policy.selective.threshold == pytest.approx(0.9)
    assert policy.to_dict()["threshold_policy"] == "youden"
    json.dumps(policy.to_dict(), allow_nan=False)


def test_decision_set_round_trip_and_strict_parsing() -> None:
    known = _known_set()
    assert DecisionSet.from_dict(json.loads(json.dumps(known.to_dict()))) == known
    for bad, message in [
        ({"probabilities": [0.5] * 30, "labels": [1] * 30}, "both high and low"),
        ({"probabilities": [0.5] * 10, "labels": [0, 1] * 5}, "at least 20"),
        ({"probabilities": [1.5] * 30, "labels": [0, 1] * 15}, "within"),
        ({"probabilities": [0.5] * 30, "labels": [0, 2] * 15}, "0 .low. or 1"),
        ({"probabilities": [0.5] * 30, "labels": [0, 1] * 15, "x": 1}, "unknown keys"),
        ({"probabilities": "0.5", "labels": []}, "lists"),
        ([1, 2], "JSON object"),
    ]:
        with pytest.raises(ValueError, match=message):
            DecisionSet.from_dict(bad)


def _policy(threshold: float | None = None, ood_threshold: float | None = None) -> CallPolicy:
    known = _known_set()
    base = resolve_policy(decision_set=known, alpha=0.05, ood_threshold=ood_threshold)
    if threshold is None:
        return base
    selective = risk_controlled_threshold(known.probabilities, known.labels, alpha=0.05)
    return CallPolicy(selective=selective, alpha=0.05, ood_threshold=ood_threshold)


def test_well_decision_calls_confident_wells_and_sends_the_rest_to_fct() -> None:
    policy = _policy()
    assert policy.selective is not None and policy.selective.threshold == pytest.approx(0.9)
    called = decide_well([0.95, 0.97], [None, None], policy)
    assert (called.label, called.leaning, called.reason) == ("high", "high", "")
    assert called.spread == pytest.approx(0.01) and called.confidence == pytest.approx(0.95)
    unsure = decide_well([0.3], [None], policy)
    assert (unsure.label, unsure.leaning) == (UNCERTAIN, "low")
    assert "confirm by FCT: confidence 0.700 < 0.900" in unsure.reason
    # Each field is confident, but they disagree: the mean is 0.5, the spread 0.45.
    split = decide_well([0.05, 0.95], [None, None], policy)
    assert split.label == UNCERTAIN and "fields disagree" in split.reason


def test_well_decision_leaves_out_of_distribution_fields_and_makes_no_call_without_any() -> None:
    policy = _policy(ood_threshold=10.0)
    partial = decide_well([0.99, 0.2], [3.0, 50.0], policy)
    assert partial.label == "high" and partial.fields_in_distribution == 1
    assert partial.probability == pytest.approx(0.99) and partial.ood_score == 3.0
    assert "1 of 2 fields out of distribution" in partial.reason
    none = decide_well([0.99, 0.98], [30.0, 12.5], policy)
    assert (none.label, none.leaning, none.fields_in_distribution) == (NO_CALL, None, 0)
    assert "lowest score 12.5 > 10.0" in none.reason
    with pytest.raises(ValueError, match="at least one field"):
        decide_well([], [], policy)


def test_nothing_certifiable_makes_every_well_uncertain() -> None:
    # 50 fields cannot certify alpha 0.02 (it needs >= 114 calls even without error).
    small = DecisionSet.of([0.99] * 25 + [0.01] * 25, [1] * 25 + [0] * 25)
    policy = resolve_policy(decision_set=small, alpha=0.02)
    assert policy.selective is not None and policy.selective.calls_nothing
    result = decide_well([0.999], [None], policy)
    assert result.label == UNCERTAIN and "no confidence threshold certifies" in result.reason


# -- the ONNX path ---------------------------------------------------------------------------


@pytest.fixture
def bundled_copy(tmp_path: Path) -> Path:
    source = BUNDLED_REPOSITORY / "hscnn-sim" / "1" / "model.onnx"
    target = tmp_path / "repo" / "hscnn-sim" / "1" / "model.onnx"
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    return target


def _guard(threshold: float) -> ood.OodGuard:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6, 32, 32)).astype(np.float32)
    masks = (rng.random((40, 1, 32, 32)) > 0.5).astype(np.float32)
    fitted = ood.fit_ood_guard(features, masks)
    return ood.OodGuard.from_dict({**fitted.to_dict(), "threshold": threshold})


def test_onnx_model_carries_decision_set_and_guard(bundled_copy: Path) -> None:
    plain = OnnxClassifier(bundled_copy, providers="cpu")
    assert plain.decision_set is None and plain.ood_guard is None
    known, guard = _known_set(), _guard(7.5)
    write_metadata(
        bundled_copy,
        {
            decision.METADATA_KEY: json.dumps(known.to_dict()),
            ood.METADATA_KEY: json.dumps(guard.to_dict()),
        },
    )
    carried = OnnxClassifier(bundled_copy, providers="cpu")
    assert carried.decision_set == known
    assert carried.ood_guard is not None and carried.ood_guard.threshold == 7.5
    write_metadata(bundled_copy, {decision.METADATA_KEY: "{not json"})
    with pytest.raises(ValueError, match="malformed 'decision_set'"):
        OnnxClassifier(bundled_copy, providers="cpu")
    write_metadata(bundled_copy, {decision.METADATA_KEY: None, ood.METADATA_KEY: None})
    assert OnnxClassifier(bundled_copy, providers="cpu").ood_guard is None


def _simulated_wells(count: int) -> list:
    config = SimulationConfig(seed=901)
    scanner = StepScanner(SimulatedMicroscope(config, barcode="DECIDE-901"))
    wells = config.plate.well_names[:count]
    return [w for w in scanner.scan(ScanPlan("DECIDE-901", list(wells), objective="40x"))]


def test_classifier_on_simulated_wells_gives_uncertain_and_no_call(bundled_copy: Path) -> None:
    wells = _simulated_wells(6)
    plain = WellClassifier(OnnxClassifier(bundled_copy, providers="cpu"))
    before = [plain.classify(w.fields) for w in wells]
    assert all(c.label in ("high", "low") and c.reason is None for c in before if c.probability)

    # A decision set that certifies only p <= 0.1 or >= 0.9, and a guard no field passes.
    write_metadata(bundled_copy, {decision.METADATA_KEY: json.dumps(_known_set().to_dict())})
    classifier = WellClassifier(OnnxClassifier(bundled_copy, providers="cpu"))
    selective = classifier.policy(alpha=0.05)
    calls = [classifier.classify(w.fields, selective) for w in wells]
    for old, new in zip(before, calls, strict=True):
        if old.probability is None:
            continue
        assert new.leaning == old.label and new.probability == pytest.approx(old.probability)
        expected = new.leaning if max(old.probability, 1 - old.probability) >= 0.9 else UNCERTAIN
        assert new.label == expected

    write_metadata(bundled_copy, {ood.METADATA_KEY: json.dumps(_guard(1e-6).to_dict())})
    guarded = WellClassifier(OnnxClassifier(bundled_copy, providers="cpu"))
    for call in (guarded.classify(w.fields) for w in wells):
        if call.probability is None:
            continue
        assert call.label == NO_CALL and call.fields_used == 0
        assert "out_of_distribution" in call.qc_flags
        assert all(f.ood_score is not None for f in call.fields if f.probability is not None)


# -- what training publishes -----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data() -> TrainingData:
    sim = SimulationConfig(seed=5, overexposure_rate=0.0)
    pipeline = PipelineConfig(ws=1)
    wells = SimulationConfig().plate.well_names

    def images(barcodes: list[str], picked: list[str]):
        return simulated_image_set(
            barcodes, sim=sim, pipeline=pipeline, wells=picked, workers=1, progress=False
        )

    return TrainingData(
        train=images(["D-TRAIN-0", "D-TRAIN-1"], wells[:16]),
        val=images(["D-VAL-0"], wells[:24]),
        test=images(["D-TEST-0"], wells[:12]),
        calibration=images(["D-CAL-0"], wells[:24]),
        provenance={"source": "test"},
        intended_use="tests",
    )


def test_training_publishes_calibration_decision_set_and_guard(
    small_data: TrainingData, tmp_path: Path
) -> None:
    artifact, _ = train_and_publish(
        small_data,
        repository=tmp_path / "repo",
        name="decide",
        pipeline=PipelineConfig(ws=1),
        train_config=TrainConfig(epochs=2, batch_size=8, seed=1),
        progress=False,
    )
    served = OnnxClassifier(artifact.model_path, providers="cpu")
    assert served.decision_set is not None and served.decision_set.size == 24
    assert served.decision_set.held_out and "D-CAL-0" in served.decision_set.source
    assert served.ood_guard is not None and served.ood_guard.n_train == 32
    saved = json.loads(artifact.card_path.read_text())
    assert saved["calibration"]["method"] == served.calibration.method
    assert 0.0 <= saved["calibration"]["ece_test_calibrated"] <= 1.0
    assert set(saved["decision_set"]["thresholds"]) == {
        "default",
        "youden",
        "sensitivity:0.95",
        "specificity:0.95",
    }
    assert saved["decision_set"]["selective"]["0.02"]["threshold"] > 1.0  # 24 fields: nothing
    assert 0.0 <= saved["ood"]["test_flagged"] <= 1.0
    # The card's decision set is the served one: calibrated probabilities of the held-out plate.
    raw, _ = served.predict(
        small_data.calibration.features, small_data.calibration.masks, calibrated=False
    )
    np.testing.assert_allclose(
        served.decision_set.probabilities, served.calibration.apply(raw), atol=1e-4
    )


def test_reliability_parts_the_data_cannot_support_are_skipped(small_data: TrainingData) -> None:
    from models.networks import create_model
    from training.trainer import train

    tiny = TrainingData(
        train=small_data.train.subset(np.arange(8)),
        val=small_data.val.subset(np.arange(6)),
        test=small_data.test,
        provenance={},
        intended_use="tests",
    )
    model = create_model("scnn", in_bands=tiny.train.features.shape[1])
    trained = train(
        model, tiny.train, tiny.val, TrainConfig(epochs=1, batch_size=4), progress=False
    )
    parts = fit_reliability(trained.model, tiny)
    assert parts.decision_set is None and "at least 20" in parts.skipped["decision_set"]
    assert parts.ood_guard is None and "8 training fields" in parts.skipped["ood"]
    assert parts.calibration == Calibration() or parts.calibration.method != "identity"
    assert "skipped" in parts.card(trained.model, tiny.test)["ood"]  # type: ignore[operator]


def test_the_simulated_prevalence_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.runtime import backend_options
    from app.settings import Settings
    from hardware.sim import plate_truth

    monkeypatch.setenv("MSCREEN_SIMULATION_HIGH_FRACTION", "0.9")
    config = backend_options(Settings()).simulation_config()
    assert config.high_fraction == 0.9
    truth = plate_truth(config, "PREVALENCE-1")
    high = sum(t.label == "high" for t in truth.values()) / len(truth)
    assert 0.8 <= high <= 1.0
    monkeypatch.setenv("MSCREEN_SIMULATION_HIGH_FRACTION", "1.5")
    with pytest.raises(ValueError, match="less than or equal to 1"):
        Settings()


def test_confidence_is_the_probability_that_the_leaning_is_right() -> None:
    known = _known_set()
    # sensitivity:0.95 picks 0.4: a well at p = 0.42 leans high against the odds.
    policy = resolve_policy(decision_set=known, threshold_policy="sensitivity:0.95", alpha=0.3)
    assert policy.threshold == pytest.approx(0.4)
    against = decide_well([0.42], [None], policy)
    assert against.leaning == "high" and against.confidence == pytest.approx(0.42)
    assert policy.guarantee is not None and policy.guarantee.startswith("approximate")
    exact = resolve_policy(decision_set=known, alpha=0.05)
    assert exact.guarantee == "exact" and exact.to_dict()["start_coverage"] == 0.5


def test_policy_text_round_trips_without_changing_the_rate() -> None:
    for text in ("specificity:0.9999999", "sensitivity:1e-05", "sensitivity:1"):
        policy = ThresholdPolicy.parse(text)
        assert ThresholdPolicy.parse(str(policy)) == policy
    assert str(ThresholdPolicy.parse("specificity:0.9999999")) == "specificity:0.9999999"


def test_tiny_alpha_certifies_nothing_quickly() -> None:
    from models.selective import minimum_calls

    assert minimum_calls(1e-12, 0.1) > 10**12
    policy = resolve_policy(decision_set=_known_set(), alpha=1e-17)
    assert policy.selective is not None and policy.selective.calls_nothing


def test_a_guard_for_another_band_count_is_refused_at_load(bundled_copy: Path) -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(30, 3, 16, 16)).astype(np.float32)
    masks = (rng.random((30, 1, 16, 16)) > 0.5).astype(np.float32)
    three_bands = ood.fit_ood_guard(features, masks)
    write_metadata(bundled_copy, {ood.METADATA_KEY: json.dumps(three_bands.to_dict())})
    with pytest.raises(ValueError, match="6 bands give"):
        OnnxClassifier(bundled_copy, providers="cpu")


def test_recalibrating_drops_the_decision_set(bundled_copy: Path) -> None:
    from models.onnx_export import write_calibration

    write_metadata(bundled_copy, {decision.METADATA_KEY: json.dumps(_known_set().to_dict())})
    write_calibration(bundled_copy, Calibration(method="temperature", temperature=1.5))
    reloaded = OnnxClassifier(bundled_copy, providers="cpu")
    assert reloaded.calibration.method == "temperature" and reloaded.decision_set is None


def test_a_resumed_scan_keeps_the_policy_its_first_wells_were_called_under() -> None:
    from app.worker import recorded_policy

    requested = {"threshold_policy": "default", "alpha": 0.05, "delta": 0.1}
    first = recorded_policy(
        requested, resolve_policy(decision_set=_known_set(), alpha=0.05), model=1
    )
    assert first["requested"] == requested and first["model_version_id"] == 1
    same = recorded_policy(first, resolve_policy(decision_set=_known_set(), alpha=0.05), model=1)
    assert same == first
    other_set = DecisionSet.of([0.2] * 150 + [0.8] * 150, [0] * 150 + [1] * 150)
    moved = recorded_policy(first, resolve_policy(decision_set=other_set, alpha=0.05), model=2)
    assert moved["model_version_id"] == 2 and moved["superseded"] == [first]


def test_a_policy_the_serving_model_cannot_serve_fails_the_scan_without_a_traceback(
    bundled_copy: Path,
) -> None:
    from app.worker import PolicyUnavailableError, resolve_scan_policy

    plain = WellClassifier(OnnxClassifier(bundled_copy, providers="cpu"))  # no decision set
    with pytest.raises(PolicyUnavailableError, match=r"call policy: threshold policy youden.*v1"):
        resolve_scan_policy(plain, {"threshold_policy": "youden", "alpha": None, "delta": 0.1})
    assert resolve_scan_policy(plain, None).threshold == 0.5  # scans from before: the default
