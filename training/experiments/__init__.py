"""The paper's experiments, runnable at small scale on a CPU: each writes CSV, Markdown and PNG.

- :func:`cv_experiment` (:mod:`.cv`): grouped k-fold cross-validation on an ImageFolder dataset,
  with and without HSM (SSN off = ``ws=1``), paired McNemar / DeLong between the two.
- :func:`plate_eval_experiment` (:mod:`.plate_eval`): train on simulated plates, evaluate one
  held-out 96-well plate against its FCT labels with the seven metrics and bootstrap CIs, and an
  ROC curve.
- :func:`ws_k_grid_experiment` (:mod:`.ws_k_grid`): accuracy over the SSCD window size WS and
  SSN count K.
- :func:`learning_curve_experiment` (:mod:`.learning_curve`): test accuracy, training time and
  parameter count of each network against the number of training images (20..100), mean +- sd
  over seeds.

Shared settings and fit-and-predict are in :mod:`.common`; what each experiment writes (under
``out_dir``, ``reports/<name>/`` from the CLI) is laid out in :mod:`.reports`.
"""

from training.experiments.common import ModelSpec, SimulatedSettings
from training.experiments.cv import CVSettings, cross_validate, cv_experiment
from training.experiments.learning_curve import (
    LEARNING_CURVE_SIZES,
    balanced_order,
    learning_curve_experiment,
)
from training.experiments.plate_eval import plate_eval_experiment
from training.experiments.reports import (
    grid_plot,
    read_learning_curve_rows,
    write_learning_curve_report,
)
from training.experiments.ws_k_grid import ws_k_grid_experiment

__all__ = [
    "LEARNING_CURVE_SIZES",
    "CVSettings",
    "ModelSpec",
    "SimulatedSettings",
    "balanced_order",
    "cross_validate",
    "cv_experiment",
    "grid_plot",
    "learning_curve_experiment",
    "plate_eval_experiment",
    "read_learning_curve_rows",
    "write_learning_curve_report",
    "ws_k_grid_experiment",
]
