"""(3) Accuracy over the SSCD window size WS and SSN count K on held-out simulated plates."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.metrics import auc_score, binary_metrics
from training.experiments.common import SimulatedSettings, fit_predict, train_config_for
from training.experiments.reports import write_ws_k_grid_report

logger = logging.getLogger(__name__)


def ws_k_grid_experiment(
    out_dir: Path,
    settings: SimulatedSettings,
    *,
    ws_values: Sequence[int] = (1, 5, 9),
    k_values: Sequence[int] = (4, 12),
    progress: bool = True,
) -> dict[str, Any]:
    """Test accuracy / AUC on held-out simulated plates for each valid (WS, K); ws=1 = no SSN."""
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for ws in ws_values:
        for k in k_values if ws > 1 else k_values[:1]:
            if ws > 1 and k > ws * ws - 1:
                continue
            t0 = time.perf_counter()
            pipeline = replace(settings.pipeline, ws=ws, k=k)
            train_set = settings.images("train", settings.train_plates, pipeline, progress)
            val_set = settings.images("val", settings.val_plates, pipeline, progress)
            test_set = settings.images("test", settings.test_plates, pipeline, progress)
            probability, info = fit_predict(
                settings.model,
                train_set,
                val_set,
                test_set,
                train_config_for(settings.train, pipeline),
                progress,
            )
            rows.append(
                {
                    "ws": ws,
                    "k": k if ws > 1 else "-",
                    "test_images": len(test_set),
                    "accuracy": binary_metrics(test_set.labels, probability).accuracy,
                    "auc": auc_score(test_set.labels, probability),
                    **info,
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
            )
            logger.info("ws %d k %d: %s", ws, k, rows[-1])
    return write_ws_k_grid_report(out_dir, rows, settings, k_values=k_values, started=started)
