"""The training loop: readable top to bottom, seeded, early-stopped on validation loss."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812
from tqdm import tqdm

from models.networks import MaskedClassifier
from training.data import ImageSet

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved in the model card."""

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 6  # epochs without validation-loss improvement before stopping
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0 = torch default)
    augment: bool = True  # flips and 180-degree rotation (inputs are not square)
    balance_classes: bool = True  # weight the loss by inverse class frequency


@dataclass
class TrainResult:
    model: MaskedClassifier
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    config: TrainConfig = field(default_factory=TrainConfig)

    def summary(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "seconds": round(self.seconds, 1),
            "history": self.history,
            "config": asdict(self.config),
        }


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _augment(
    features: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal/vertical flips per sample (both together = 180-degree rotation)."""
    flip_h = torch.rand(features.shape[0], generator=generator) < 0.5
    flip_v = torch.rand(features.shape[0], generator=generator) < 0.5
    features = torch.where(flip_h[:, None, None, None], features.flip(-1), features)
    masks = torch.where(flip_h[:, None, None, None], masks.flip(-1), masks)
    features = torch.where(flip_v[:, None, None, None], features.flip(-2), features)
    masks = torch.where(flip_v[:, None, None, None], masks.flip(-2), masks)
    return features, masks


def _pos_weight(labels: np.ndarray) -> torch.Tensor:
    positives = max(int(labels.sum()), 1)
    negatives = max(int(len(labels) - labels.sum()), 1)
    return torch.tensor(negatives / positives, dtype=torch.float32)


@torch.no_grad()
def predict(model: MaskedClassifier, data: ImageSet, batch_size: int = 32) -> np.ndarray:
    """P(high) for every image, (N,) float32."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        features = torch.from_numpy(data.features[start : start + batch_size])
        masks = torch.from_numpy(data.masks[start : start + batch_size])
        _, probability = model(features, masks)
        out.append(probability.numpy())
    return np.concatenate(out).astype(np.float32)


def _pooled_logit(
    model: MaskedClassifier, features: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    _, logit = model.forward_logits(features, masks)
    return logit


def evaluate_loss(
    model: MaskedClassifier, data: ImageSet, pos_weight: torch.Tensor, batch_size: int = 32
) -> float:
    probability = torch.from_numpy(predict(model, data, batch_size)).clamp(1e-6, 1 - 1e-6)
    labels = torch.from_numpy(data.labels.astype(np.float32))
    return float(
        F.binary_cross_entropy_with_logits(torch.logit(probability), labels, pos_weight=pos_weight)
    )


def train(
    model: MaskedClassifier,
    train_set: ImageSet,
    val_set: ImageSet,
    config: TrainConfig,
    *,
    progress: bool = True,
) -> TrainResult:
    """Fit ``model`` on ``train_set``; keep the weights of the best validation epoch."""
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    pos_weight = _pos_weight(train_set.labels) if config.balance_classes else torch.tensor(1.0)
    features_all = torch.from_numpy(train_set.features)
    masks_all = torch.from_numpy(train_set.masks)
    labels_all = torch.from_numpy(train_set.labels.astype(np.float32))

    best_loss, best_epoch, best_state = float("inf"), -1, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="training", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train_set), generator=generator)
        running, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2:  # BatchNorm needs more than one sample
                continue
            features, masks = features_all[index], masks_all[index]
            if config.augment:
                features, masks = _augment(features, masks, generator)
            loss = F.binary_cross_entropy_with_logits(
                _pooled_logit(model, features, masks), labels_all[index], pos_weight=pos_weight
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(index)
            seen += len(index)
        scheduler.step()
        val_loss = evaluate_loss(model, val_set, pos_weight)
        val_accuracy = float(np.mean((predict(model, val_set) >= 0.5) == val_set.labels))
        history.append(
            {
                "epoch": epoch,
                "train_loss": running / max(seen, 1),
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
            }
        )
        bar.set_postfix(
            train=f"{running / max(seen, 1):.3f}", val=f"{val_loss:.3f}", acc=f"{val_accuracy:.3f}"
        )
        logger.info(
            "epoch %d train %.4f val %.4f acc %.3f",
            epoch,
            running / max(seen, 1),
            val_loss,
            val_accuracy,
        )
        if val_loss < best_loss - 1e-4:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, history, time.perf_counter() - started, config)
