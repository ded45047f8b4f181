"""The training loop: readable top to bottom, seeded, early-stopped on validation loss."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812
from tqdm import tqdm

from models.networks import MaskedClassifier, registered_models
from models.pipeline import PipelineConfig
from training.imagesets import ImageSet

logger = logging.getLogger(__name__)

# Learning-rate schedules: "cosine" (per epoch, to 0 at ``epochs``; the default), "warmup_cosine"
# (linear warm-up over ``warmup_epochs``, then cosine, per step) and "onecycle" (PyTorch's
# OneCycleLR, per step, peak ``learning_rate``).
Schedule = Literal["cosine", "warmup_cosine", "onecycle"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved in the model card."""

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 6  # epochs without validation-loss improvement before stopping
    # Early stopping neither selects nor stops before this epoch. In the first epochs a freshly
    # initialised net often calls every validation image one class (BatchNorm's running
    # statistics lag the weights), and its loss then *rises* before it falls; without a floor
    # small training sets stop at patience with the untrained epoch 0 "best".
    min_epochs: int = 3
    # Before each validation, recompute BatchNorm's running statistics over the training set
    # (train-mode forward passes, no gradients, cumulative average). Small sets give an epoch
    # few steps, and the running averages (momentum 0.1) then lag weights that still move fast:
    # validation calls every image one class for several epochs. Costs one forward pass over
    # the training set per epoch.
    precise_batchnorm: bool = True
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0 = torch default)
    # Flips and 180-degree rotation; also 90/270-degree rotations where the input is square
    # (the default 220 x 300 input is not: a quarter turn would change its shape).
    augment: bool = True
    # Mild intensity jitter on the intensity-like bands only (indices into the feature bands;
    # see intensity_band_indices). Each sample's band planes f become a * f + b with
    # a ~ U(1 - j, 1 + j), b ~ U(-j, j) (feature units: 1 = 32 grey levels). This stands in for
    # exposure/contrast jitter of the raw frame, which cannot be redone after the pipeline has
    # run; derived bands (gradient, LoG, local std, ...) are left alone. 0 switches it off.
    intensity_jitter: float = 0.05
    intensity_bands: tuple[int, ...] = ()
    balance_classes: bool = True  # weight the loss by inverse class frequency
    # Keep the weights of the best validation-loss epoch, stopping early (True), or run every
    # epoch and keep the last (False: for tiny validation sets, whose loss is too noisy to pick
    # an epoch by; the cosine schedule has annealed the learning rate by then).
    restore_best: bool = True
    # Where to train: "cpu" (the default, and the only deterministic one), "cuda" or "auto"
    # (CUDA when torch sees a GPU). The trained model stays on that device; predict() follows it.
    device: str = "cpu"
    # An epoch shows at least this many samples (the shuffled set repeated, each pass with fresh
    # augmentation). Tiny training sets otherwise get a handful of optimizer steps per epoch: 20
    # images are 2 steps, so early stopping judges a barely trained net and BatchNorm's running
    # statistics (momentum 0.1) have not settled. 0 = one pass over the set.
    min_epoch_samples: int = 0
    # Recipe levers (issue 13); the defaults are the recipe above, so `mscreen train` is unchanged.
    schedule: Schedule = "cosine"
    warmup_epochs: int = 2  # "warmup_cosine" only
    # Binary label smoothing: targets y -> y (1 - s) + s / 2. Calibrates the pooled logit on
    # small sets, where a net otherwise drives training images to 0/1 and overfits.
    label_smoothing: float = 0.0
    # Exponential moving average of the weights (decay per optimizer step; 0 = off). When on,
    # the EMA copy (BatchNorm statistics recomputed by precise BN) is what validation scores and
    # what train() returns: an average over the last ~1 / (1 - decay) steps is a flatter, less
    # noisy solution than the last iterate, which matters when the epoch cannot be picked on a
    # tiny validation split. The effective decay ramps up as min(decay, (1 + t) / (10 + t)).
    ema_decay: float = 0.0
    # With restore_best=False only: recompute BatchNorm and score the validation split every
    # this many epochs (and after the last). Nothing is selected on those scores, so skipping
    # them saves a forward pass over the training set per epoch (a quarter of the CPU time).
    validate_every: int = 1

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.validate_every < 1:
            raise ValueError(f"validate_every must be >= 1, got {self.validate_every}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"training device {name!r} asked for, but torch sees no CUDA GPU")
    return device


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


# Bands whose values are (smoothed) grey levels, so an exposure change scales and shifts them.
INTENSITY_LIKE_BANDS = frozenset({"intensity", "gauss_1", "gauss_2", "gauss_4"})


def intensity_band_indices(bands: Sequence[str]) -> tuple[int, ...]:
    """Indices of the intensity-like bands in a pipeline's ``bands`` (for intensity jitter)."""
    return tuple(i for i, name in enumerate(bands) if name in INTENSITY_LIKE_BANDS)


def jitter_bands(pipeline: PipelineConfig, in_bands: int) -> tuple[int, ...]:
    """The feature bands an exposure change would scale: the intensity-like filter-bank bands,
    or, with ``band_source="channels"`` or ``intensity="standardise"``, every band (each is an
    acquired channel's intensity; ``pipeline.bands`` then names filter-bank bands that are not
    used)."""
    if pipeline.band_source == "channels" or pipeline.intensity == "standardise":
        return tuple(range(in_bands))
    return intensity_band_indices(pipeline.bands)


def _augment(
    features: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    config: TrainConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips per sample (both = 180-degree rotation), quarter turns where the input is
    square, and intensity jitter on ``config.intensity_bands``; ``features`` (N, B, H, W)."""
    n, device = features.shape[0], features.device
    # Draws come from the CPU generator (the same stream on every device), then move over.
    flip_h = (torch.rand(n, generator=generator) < 0.5).to(device)
    flip_v = (torch.rand(n, generator=generator) < 0.5).to(device)
    features = torch.where(flip_h[:, None, None, None], features.flip(-1), features)
    masks = torch.where(flip_h[:, None, None, None], masks.flip(-1), masks)
    features = torch.where(flip_v[:, None, None, None], features.flip(-2), features)
    masks = torch.where(flip_v[:, None, None, None], masks.flip(-2), masks)
    if features.shape[-1] == features.shape[-2]:
        # With the flips above, a quarter turn or none reaches all 8 symmetries of the square.
        turn = (torch.rand(n, generator=generator) < 0.5).to(device)[:, None, None, None]
        features = torch.where(turn, features.rot90(1, (-2, -1)), features)
        masks = torch.where(turn, masks.rot90(1, (-2, -1)), masks)
    if config is not None and config.intensity_jitter > 0 and config.intensity_bands:
        j = config.intensity_jitter
        bands = list(config.intensity_bands)
        gain = (1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * j).to(device)
        shift = ((torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * j).to(device)
        features = features.clone()
        features[:, bands] = features[:, bands] * gain + shift
    return features, masks


def _pos_weight(labels: np.ndarray) -> torch.Tensor:
    positives = max(int(labels.sum()), 1)
    negatives = max(int(len(labels) - labels.sum()), 1)
    return torch.tensor(negatives / positives, dtype=torch.float32)


def _symmetries(square: bool) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The flips (and, for square inputs, transposes) that training augmentation draws from."""
    flips: list[Callable[[torch.Tensor], torch.Tensor]] = [
        lambda x: x,
        lambda x: x.flip(-1),
        lambda x: x.flip(-2),
        lambda x: x.flip(-1).flip(-2),
    ]
    if not square:
        return flips
    return flips + [lambda x, f=f: f(x).rot90(1, (-2, -1)) for f in flips]


@torch.no_grad()
def predict(
    model: MaskedClassifier, data: ImageSet, batch_size: int = 32, *, tta: bool = False
) -> np.ndarray:
    """P(high) for every image, (N,) float32.

    ``tta``: average the probability over the symmetries used in augmentation (4 flips, or all
    8 for square inputs). The service scores one orientation; use it for offline studies only.
    """
    model.eval()
    device = next(model.parameters()).device
    out = []
    square = data.features.shape[-1] == data.features.shape[-2]
    transforms = _symmetries(square) if tta else _symmetries(False)[:1]
    for start in range(0, len(data), batch_size):
        features = torch.from_numpy(data.features[start : start + batch_size]).to(device)
        masks = torch.from_numpy(data.masks[start : start + batch_size]).to(device)
        total = torch.zeros(features.shape[0], device=device)
        for transform in transforms:
            _, probability = model(transform(features), transform(masks))
            total += probability
        out.append((total / len(transforms)).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _pooled_logit(
    model: MaskedClassifier, features: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    _, logit = model.forward_logits(features, masks)
    return logit


@torch.no_grad()
def recompute_batchnorm(
    model: MaskedClassifier, features: torch.Tensor, masks: torch.Tensor, batch_size: int = 32
) -> None:
    """Set every BatchNorm's running mean/var to the average over ``features`` (no augmentation),
    as "precise BN" does; the model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    for start in range(0, features.shape[0], batch_size):
        model.forward_logits(
            features[start : start + batch_size], masks[start : start + batch_size]
        )
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def validation_scores(
    model: MaskedClassifier, data: ImageSet, pos_weight: torch.Tensor, batch_size: int = 32
) -> tuple[float, float]:
    """(class-weighted BCE loss, accuracy at 0.5) on ``data``, from one prediction pass."""
    probability = torch.from_numpy(predict(model, data, batch_size)).clamp(1e-6, 1 - 1e-6)
    labels = torch.from_numpy(data.labels.astype(np.float32))
    loss = F.binary_cross_entropy_with_logits(
        torch.logit(probability), labels, pos_weight=pos_weight.cpu()
    )
    accuracy = float(((probability >= 0.5).float() == labels).float().mean())
    return float(loss), accuracy


def train(
    model: MaskedClassifier,
    train_set: ImageSet,
    val_set: ImageSet,
    config: TrainConfig,
    *,
    progress: bool = True,
) -> TrainResult:
    """Fit ``model`` on ``train_set``; keep the weights of the best validation epoch.

    The model trains (and stays) on ``config.device``; augmentation draws from a CPU generator,
    so the random stream is the same on every device.
    """
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    pos_weight = _pos_weight(train_set.labels) if config.balance_classes else torch.tensor(1.0)
    pos_weight = pos_weight.to(device)
    # The whole training set sits on the training device (a few hundred MB at most), so a GPU
    # is not fed batch by batch from host memory.
    features_all = torch.from_numpy(train_set.features).to(device)
    masks_all = torch.from_numpy(train_set.masks).to(device)
    labels_all = torch.from_numpy(train_set.labels.astype(np.float32)).to(device)
    passes = max(1, -(-config.min_epoch_samples // max(len(train_set), 1)))
    epoch_samples = max(len(train_set), config.min_epoch_samples)
    steps_per_epoch = max(
        1, sum(1 for s in range(0, epoch_samples, config.batch_size) if epoch_samples - s >= 2)
    )
    epoch_scheduler, step_scheduler = _schedulers(optimizer, config, steps_per_epoch)
    ema = _Ema(model, config.ema_decay) if config.ema_decay > 0 else None
    scored = ema.model if ema is not None else model

    best_loss, best_epoch, best_state = float("inf"), -1, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="training", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.cat(
            [torch.randperm(len(train_set), generator=generator) for _ in range(passes)]
        )[: max(len(train_set), config.min_epoch_samples)]
        running, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2:  # BatchNorm needs more than one sample
                continue
            index = index.to(device)
            features, masks = features_all[index], masks_all[index]
            if config.augment:
                features, masks = _augment(features, masks, generator, config)
            targets = labels_all[index]
            if config.label_smoothing > 0:
                targets = targets * (1 - config.label_smoothing) + config.label_smoothing / 2
            loss = F.binary_cross_entropy_with_logits(
                _pooled_logit(model, features, masks), targets, pos_weight=pos_weight
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step_scheduler is not None:
                step_scheduler.step()
            if ema is not None:
                ema.update(model)
            running += float(loss.detach()) * len(index)
            seen += len(index)
        if epoch_scheduler is not None:
            epoch_scheduler.step()
        if (
            not config.restore_best
            and (epoch + 1) % config.validate_every
            and epoch < (config.epochs - 1)
        ):
            # Keep-last runs pick no epoch: skip the BN pass and validation between checkpoints.
            history.append({"epoch": epoch, "train_loss": running / max(seen, 1)})
            continue
        if config.precise_batchnorm:
            recompute_batchnorm(scored, features_all, masks_all)
        val_loss, val_accuracy = validation_scores(scored, val_set, pos_weight)
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
        if epoch < min(config.min_epochs, config.epochs - 1):
            continue  # warm-up: neither a candidate nor a reason to stop
        if val_loss < best_loss - 1e-4:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(scored.state_dict())
        elif config.restore_best and epoch - best_epoch >= config.patience:
            logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
            break
    if config.restore_best:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history) - 1
        if ema is not None:
            model.load_state_dict(ema.model.state_dict())
    model.eval()
    return TrainResult(model, best_epoch, history, time.perf_counter() - started, config)


def _schedulers(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> tuple[Any, Any]:
    """(per-epoch scheduler, per-step scheduler) of ``config.schedule``; one of them is None."""
    epochs = max(config.epochs, 1)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs), None
    total = epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return None, torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=total + 1
        )
    warmup = min(config.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return None, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Ema:
    """Exponential moving average of a model's parameters (buffers copied: precise BN
    recomputes the BatchNorm statistics of the average before it is scored)."""

    def __init__(self, model: MaskedClassifier, decay: float) -> None:
        self.model = copy.deepcopy(model)
        self.decay = decay
        self.steps = 0
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: MaskedClassifier) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for average, current in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(current.detach(), 1.0 - decay)
        for buffer, source in zip(self.model.buffers(), model.buffers(), strict=True):
            buffer.copy_(source)


def check_device(name: str) -> None:
    """ValueError unless ``name`` is a device torch can train on here."""
    try:
        resolve_device(name)
    except RuntimeError as exc:  # torch's own word for a device string it cannot parse
        raise ValueError(f"training device {name!r}: {exc}") from exc


def check_architecture(name: str) -> None:
    """ValueError unless ``name`` is a registered network."""
    if name not in registered_models():
        raise ValueError(f"unknown network {name!r}; known: {registered_models()}")
