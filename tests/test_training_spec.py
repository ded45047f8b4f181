"""One spelling of a training run's parameters: the API body is the spec's remote subset, and
the CLI and the training child validate through the same model."""

import pytest
from pydantic import ValidationError

from app.schemas.models import TrainingRunCreate
from models.training_spec import TrainingRequest, TrainingSpec


def test_the_api_body_is_the_specs_remote_subset():
    assert issubclass(TrainingRunCreate, TrainingRequest)
    assert issubclass(TrainingSpec, TrainingRequest)
    remote = set(TrainingRunCreate.model_fields)
    assert remote < set(TrainingSpec.model_fields)
    # What a run stores (the API body) is a valid spec, with every other field at its default.
    stored = TrainingRunCreate(source="database", plates=["P1"], epochs=3).model_dump()
    spec = TrainingSpec.model_validate(stored)
    assert (spec.source, spec.plates, spec.epochs) == ("database", ["P1"], 3)
    assert spec.model_dump(exclude=remote) == TrainingSpec().model_dump(exclude=remote)


def test_the_api_refuses_what_only_a_local_caller_may_ask():
    with pytest.raises(ValidationError, match="source"):
        TrainingRunCreate.model_validate({"source": "folder"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TrainingRunCreate.model_validate({"data": "/etc"})
    assert TrainingSpec(source="folder", data="/tmp/x").data is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("epochs", 501), ("train_plates", 51), ("ws", 0), ("k", 1), ("size", 8),
     ("difficulty", 1.5), ("device", "tpu"), ("name", "bad name")],
)  # fmt: skip
def test_limits_are_stated_once(field, value):
    with pytest.raises(ValidationError, match=field):
        TrainingSpec.model_validate({field: value})
