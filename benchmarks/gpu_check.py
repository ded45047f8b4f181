"""GPU figures for a lent machine: run by benchmarks/gpu.sh (see there), or here with
``--cpu-dry-run`` to test the logic on a CPU.

Two branches, picked by what onnxruntime offers:

* **onnxruntime with CUDAExecutionProvider** (onnxruntime-gpu installed by gpu.sh from ``.whl/``):
  checks that CUDA is really the provider the session uses (``session.get_providers()[0]``; a
  missing cuDNN makes onnxruntime fall back to the CPU with only a warning), the CPU-vs-CUDA
  parity of the bundled model on a fixed input, inference-only images/s at batch 1, 8, 32 and 96,
  and whole-pipeline images/s at those batch sizes: raw frames prepared (QC, normalise, mask,
  HSM) by CPU worker processes while the main process batches them into the model;
* **otherwise PyTorch CUDA**: the bundled model rebuilt in PyTorch with the ONNX file's own
  weights (BatchNorm folded as the export folds it, convolutions copied one for one), so the
  figures are the shipped model's: parity against onnxruntime on the CPU (fp32 and bf16
  autocast), images/s at the same batch sizes in both precisions, and the whole pipeline.
  (onnxruntime-gpu's wheel is 255 MB, over the 64 MiB a device call can carry.)

Also, where torch is present: the HSM torch module of models/hsm_onnx.py on the device (time per
image at batch 8), to see what moving the feature construction to the GPU would buy.

``--cpu-dry-run`` runs both branches on the CPU (CPUExecutionProvider standing in for CUDA) with
a few frames, so every code path runs on a machine without a GPU; its figures mean nothing.

Writes ``--out`` (JSON) and prints a summary; the last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the lent machine may not have the package installed

from hardware.plate import SBS_96  # noqa: E402
from hardware.sim import SimulationConfig, render_field  # noqa: E402
from models.pipeline import PipelineConfig, prepare  # noqa: E402

MODEL_DIR = ROOT / "models/bundled/hscnn-sim/1"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---- frames and CPU preprocessing (worker processes) ------------------------------------------

_CONFIG: PipelineConfig | None = None
_BIT_DEPTH = 12


def _init_worker(config: dict[str, Any], bit_depth: int) -> None:
    import cv2

    global _CONFIG, _BIT_DEPTH
    cv2.setNumThreads(1)  # one process per core; OpenCV threads would only contend
    _CONFIG, _BIT_DEPTH = PipelineConfig.from_dict(config), bit_depth


def _render(index: int) -> np.ndarray:
    sim = SimulationConfig()
    wells = SBS_96.well_names
    well = wells[index % len(wells)]
    cx, cy = SBS_96.well_center_um(well)
    plate = f"GPU-{index // len(wells):04d}"
    return render_field(sim, plate, well, cx, cy, "40x")


def _prepare(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    assert _CONFIG is not None
    prepared = prepare(frame, _CONFIG, bit_depth=_BIT_DEPTH)
    if prepared.features is None or prepared.mask is None:
        return None  # excluded by QC
    return prepared.features, prepared.mask[None].astype(np.float32)


def _batches(
    pool: ProcessPoolExecutor, frames: list[np.ndarray], batch: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Prepared (features, masks) batches, in order, as the workers finish them."""
    features: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for item in pool.map(_prepare, frames, chunksize=4):
        if item is None:
            continue
        features.append(item[0])
        masks.append(item[1])
        if len(features) == batch:
            yield np.stack(features), np.stack(masks)
            features, masks = [], []
    if features:
        yield np.stack(features), np.stack(masks)


# ---- measurements --------------------------------------------------------------------------


def _inference_rate(
    predict: Predict, batch: int, seconds: float, sync: Callable[[], None]
) -> float:
    """Images/s of ``predict`` on random inputs of ``batch`` images (after warm-up)."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((batch, 6, 220, 300)).astype(np.float32)
    masks = (rng.random((batch, 1, 220, 300)) > 0.5).astype(np.float32)
    for _ in range(3):
        predict(features, masks)
    sync()
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 3:
        predict(features, masks)
        runs += 1
    sync()
    return runs * batch / (time.perf_counter() - started)


def _pipeline_rate(
    pool: ProcessPoolExecutor, frames: list[np.ndarray], batch: int, predict: Predict
) -> dict[str, float]:
    """Raw frames -> probabilities, preprocessing in the pool, inference in this process."""
    started = time.perf_counter()
    images = 0
    inference_s = 0.0
    for features, masks in _batches(pool, frames, batch):
        t0 = time.perf_counter()
        predict(features, masks)
        inference_s += time.perf_counter() - t0
        images += len(features)
    elapsed = time.perf_counter() - started
    return {
        "images": images,
        "images_per_s": round(images / elapsed, 1),
        "inference_share": round(inference_s / elapsed, 3),
    }


def _preprocess_rate(pool: ProcessPoolExecutor, frames: list[np.ndarray]) -> float:
    started = time.perf_counter()
    done = sum(1 for _ in pool.map(_prepare, frames, chunksize=4))
    return done / (time.perf_counter() - started)


def ort_branch(
    pool: ProcessPoolExecutor,
    frames: list[np.ndarray],
    batches: list[int],
    seconds: float,
    provider: str,
) -> dict[str, Any]:
    """onnxruntime on ``provider`` (CUDA on the lent machine; CPU in a dry run)."""
    from models.inference import OnnxClassifier

    model_path = MODEL_DIR / "model.onnx"
    accelerated = OnnxClassifier(model_path, providers="cuda" if provider == CUDA else "cpu")
    reference = OnnxClassifier(model_path, providers="cpu")
    result: dict[str, Any] = {
        "asked": provider,
        "session_providers": accelerated.providers,
        "provider_in_use": accelerated.provider,
        "provider_ok": accelerated.provider == provider,
    }
    rng = np.random.default_rng(1234)
    features = rng.standard_normal((4, 6, 220, 300)).astype(np.float32)
    masks = (rng.random((4, 1, 220, 300)) > 0.5).astype(np.float32)
    p_acc, map_acc = accelerated.predict(features, masks)
    p_ref, map_ref = reference.predict(features, masks)
    result["parity"] = {
        "max_abs_diff_probability": float(np.abs(p_acc - p_ref).max()),
        "max_abs_diff_logit_map": float(np.abs(map_acc - map_ref).max()),
        "labels_identical": bool(
            np.array_equal(p_acc >= accelerated.threshold, p_ref >= reference.threshold)
        ),
    }

    def predict(f: np.ndarray, m: np.ndarray) -> np.ndarray:
        return accelerated.predict(f, m)[0]

    result["inference_images_per_s"] = {
        b: round(_inference_rate(predict, b, seconds, lambda: None), 1) for b in batches
    }
    result["pipeline"] = {b: _pipeline_rate(pool, frames, b, predict) for b in batches}
    return result


def bundled_weights_in_torch(device_name: str) -> Any:
    """The bundled model as a PyTorch module carrying the **ONNX file's weights**.

    The export folds each BatchNorm into the convolution before it, so the ONNX file holds one
    (weight, bias) pair per convolution and no BatchNorm. Here the freshly built network is folded
    the same way (eval-mode fusion), its convolutions are listed in the order the forward pass
    calls them, and the ONNX ``Conv`` nodes' initialisers are copied in, in graph order; shapes
    must agree one for one, else this raises rather than run a half-loaded model.
    """
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from models.networks import create_model

    card = json.loads((MODEL_DIR / "model_card.json").read_text())
    architecture = card["architecture"]
    model = create_model(architecture["name"], **architecture["config"]).eval()

    # Forward order of the Conv2d and BatchNorm2d calls, from one dummy pass.
    calls: list[tuple[str, nn.Module]] = []
    names = {module: name for name, module in model.named_modules()}
    hooks = [
        module.register_forward_hook(lambda m, _i, _o: calls.append((names[m], m)))
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d))
    ]
    with torch.no_grad():
        model(
            torch.zeros(1, architecture["config"].get("in_bands", 6), 64, 64),
            torch.ones(1, 1, 64, 64),
        )
    for hook in hooks:
        hook.remove()

    def set_module(path: str, module: nn.Module) -> None:
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, leaf, module)

    convs: list[nn.Conv2d] = []
    for index, (name, module) in enumerate(calls):
        if isinstance(module, nn.BatchNorm2d):
            continue
        assert isinstance(module, nn.Conv2d)
        follower = calls[index + 1] if index + 1 < len(calls) else None
        if follower is not None and isinstance(follower[1], nn.BatchNorm2d):
            fused = fuse_conv_bn_eval(module, follower[1])
            set_module(name, fused)
            set_module(follower[0], nn.Identity())
            convs.append(fused)
        else:
            convs.append(module)

    graph = onnx.load(str(MODEL_DIR / "model.onnx")).graph
    initialisers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    conv_nodes = [node for node in graph.node if node.op_type == "Conv"]
    if len(conv_nodes) != len(convs):
        raise ValueError(f"ONNX has {len(conv_nodes)} Conv nodes, the network {len(convs)}")
    for conv, node in zip(convs, conv_nodes, strict=True):
        weight = initialisers[node.input[1]]
        bias = initialisers[node.input[2]] if len(node.input) > 2 else None
        if tuple(weight.shape) != tuple(conv.weight.shape) or (bias is None) != (conv.bias is None):
            raise ValueError(f"ONNX node {node.name}: {weight.shape} != {tuple(conv.weight.shape)}")
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight.copy()))
            if bias is not None and conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(bias.copy()))
    return model.to(torch.device(device_name)), architecture


def torch_branch(
    pool: ProcessPoolExecutor,
    frames: list[np.ndarray],
    batches: list[int],
    seconds: float,
    device_name: str,
) -> dict[str, Any]:
    """The bundled model under PyTorch on ``device_name`` with the ONNX file's weights: parity
    against onnxruntime on the CPU (same input), then images/s in fp32 and, on CUDA, under
    bf16 autocast (with its own parity figure)."""
    import torch

    model, architecture = bundled_weights_in_torch(device_name)
    device = torch.device(device_name)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def make_predict(autocast: bool) -> Predict:
        def predict(f: np.ndarray, m: np.ndarray) -> np.ndarray:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast),
            ):
                _, probability = model(
                    torch.from_numpy(f).to(device, non_blocking=True),
                    torch.from_numpy(m).to(device, non_blocking=True),
                )
                return probability.float().cpu().numpy()  # the copy back synchronises

        return predict

    result: dict[str, Any] = {
        "device": str(device),
        "weights": "the bundled ONNX file's (BatchNorm folded, copied conv by conv)",
        "architecture": architecture,
    }
    try:
        from models.inference import OnnxClassifier

        reference = OnnxClassifier(MODEL_DIR / "model.onnx", providers="cpu")
        rng = np.random.default_rng(1234)
        features = rng.standard_normal((4, 6, 220, 300)).astype(np.float32)
        masks = (rng.random((4, 1, 220, 300)) > 0.5).astype(np.float32)
        p_ref = reference.predict(features, masks)[0]
        for label, autocast in (("fp32", False), ("bf16_autocast", device.type == "cuda")):
            p_dev = make_predict(autocast)(features, masks)
            result.setdefault("parity_vs_onnxruntime_cpu", {})[label] = {
                "max_abs_diff_probability": float(np.abs(p_dev - p_ref).max()),
                "labels_identical": bool(
                    np.array_equal(p_dev >= reference.threshold, p_ref >= reference.threshold)
                ),
            }
    except Exception as exc:  # onnxruntime missing there: keep the throughput figures
        result["parity_vs_onnxruntime_cpu"] = {"error": repr(exc)}

    predict = make_predict(False)
    result["inference_images_per_s"] = {
        b: round(_inference_rate(predict, b, seconds, sync), 1) for b in batches
    }
    if device.type == "cuda":
        fast = make_predict(True)
        result["inference_images_per_s_bf16_autocast"] = {
            b: round(_inference_rate(fast, b, seconds, sync), 1) for b in batches
        }
    result["pipeline"] = {b: _pipeline_rate(pool, frames, b, predict) for b in batches}
    return result


def hsm_on_device(frames: list[np.ndarray], device_name: str) -> dict[str, Any]:
    """The HSM torch module (models/hsm_onnx.py) on the device: ms per image at batch 8."""
    import torch

    from models import pipeline as pl
    from models.hsm_onnx import build_hsm_module

    config = PipelineConfig()
    device = torch.device(device_name)
    module = build_hsm_module(config).eval().to(device)
    norms = [pl.normalise(pl.to_uint8(f, 12), config) for f in frames[:8]]
    batch = torch.from_numpy(np.stack(norms).astype(np.float32)[:, None]).to(device)
    with torch.inference_mode():
        for _ in range(2):
            module(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2.0 or runs < 2:
            features, _ = module(batch)
            features.cpu()
            runs += 1
    elapsed = time.perf_counter() - started
    return {
        "device": str(device),
        "batch": len(norms),
        "ms_per_image": elapsed * 1e3 / (runs * len(norms)),
    }


# ---- main ------------------------------------------------------------------------------------


def _environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = None
    try:
        import onnxruntime as ort

        # onnxruntime-gpu >= 1.21 can load the CUDA/cuDNN libraries that the torch wheels ship.
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            try:
                preload()
            except Exception as exc:  # best effort: the provider check below is the real test
                info["preload_dlls_error"] = repr(exc)
        info["onnxruntime"] = ort.__version__
        info["onnxruntime_file"] = ort.__file__
        info["ort_available_providers"] = list(ort.get_available_providers())
    except ImportError:
        info["onnxruntime"] = None
        info["ort_available_providers"] = []
    from models import pipeline as pl

    info["ssn_backend"] = "numba" if pl._numba_kernel() is not None else "numpy"
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--frames", type=int, default=480, help="raw frames per pipeline run")
    parser.add_argument("--batches", default="1,8,32,96", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=3.0, help="per inference measurement")
    parser.add_argument(
        "--workers", type=int, default=0, help="preprocessing processes (0: CPUs - 1)"
    )
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run every branch on the CPU with few frames, to test the script without a GPU",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    batches = [int(b) for b in args.batches.split(",")]
    if args.cpu_dry_run:
        args.frames, args.seconds, batches = (
            min(args.frames, 24),
            0.3,
            [b for b in batches if b <= 8],
        )
    workers = args.workers or max(1, (os.cpu_count() or 2) - 1)

    result: dict[str, Any] = {"dry_run": args.cpu_dry_run, "environment": _environment()}
    env = result["environment"]
    # Spawned, not forked: this process has initialised CUDA (torch) by now.
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(PipelineConfig().to_dict(), 12),
    ) as pool:
        frames = list(pool.map(_render, range(args.frames), chunksize=4))
        result["frames"] = {"count": len(frames), "shape": list(frames[0].shape), "bits": 12}
        result["workers"] = workers
        _preprocess_rate(pool, frames[: min(len(frames), 2 * workers)])  # warm the workers
        result["preprocess_images_per_s"] = round(_preprocess_rate(pool, frames), 1)

        if CUDA in env["ort_available_providers"] and not args.cpu_dry_run:
            result["onnxruntime"] = ort_branch(pool, frames, batches, args.seconds, CUDA)
        elif args.cpu_dry_run and env.get("onnxruntime"):
            result["onnxruntime"] = ort_branch(pool, frames, batches, args.seconds, CPU)
        else:
            result["onnxruntime"] = {
                "skipped": "no CUDAExecutionProvider in this onnxruntime "
                f"({env.get('onnxruntime_file')}); install onnxruntime-gpu from .whl/"
            }
        if env.get("torch") and (args.cpu_dry_run or CUDA not in env["ort_available_providers"]):
            device = "cuda" if env.get("torch_cuda") and not args.cpu_dry_run else "cpu"
            result["torch"] = torch_branch(pool, frames, batches, args.seconds, device)
        if env.get("torch"):
            device = "cuda" if env.get("torch_cuda") and not args.cpu_dry_run else "cpu"
            try:
                result["hsm_torch"] = hsm_on_device(frames, device)
            except Exception as exc:  # an extra; never lose the main figures to it
                result["hsm_torch"] = {"error": repr(exc)}
    result["total_s"] = round(time.perf_counter() - started, 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    print("RESULT " + json.dumps(result, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
