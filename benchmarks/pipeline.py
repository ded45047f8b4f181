"""Image pipeline timings: raw camera frame -> model features, one thread.

Measures, on simulated 528 x 720 12-bit frames at 40x and the default :class:`PipelineConfig`
(220 x 300, six bands, WS = 9, K = 12):

(a) per stage, median and p95 in milliseconds, wall clock and thread CPU time: 8-bit
    conversion + exposure QC, normalisation, focus score, mask, bands, weighted-mean filter, SSN
    (numpy path; numba kernel where numba is installed; the old vectorised implementation
    ``ssn_features_reference``), ``prepare()`` as serving calls it, and the raw-frame-to-HSM total
    per path. Stages of one repeat run back to back on the same frame, paths interleaved, so
    their ratios share the machine's load;
(b) the plain loop oracle (models/pipeline/oracle.py) against the fast path on a small crop, where
    the loop is tolerable, as a ratio, with the largest difference between the two;
(c) the SSN cost over the WS x K grid: WS = 1, 3, ..., 13 at K = 12 (K = 8 at WS = 3, whose
    window has 8 neighbours), and K = 2..16 at WS = 9; and the numpy path's rows per strip;
(d) the HSM as an ONNX graph (models/hsm_onnx.py): parity with the numpy path and its time under
    onnxruntime CPU, one thread and the default thread count (needs torch to export).

OpenCV, onnxruntime and numba run single-threaded (``cv2.setNumThreads(1)``, one intra-op
thread) except where a line says otherwise. The figures are printed, and the last line is
``RESULT {json}``.

Usage::

    .venv/bin/python benchmarks/pipeline.py            # ~1 minute on 2 busy cores
    .venv/bin/python benchmarks/pipeline.py --quick    # fewer repeats, smaller grid
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hardware.plate import SBS_96
from hardware.sim import SimulationConfig, render_field
from models import pipeline as pl
from models.pipeline import PipelineConfig
from models.pipeline.bands import _band_planes
from models.pipeline.oracle import ssn_oracle
from models.pipeline.ssn import _ssn_mean, _ssn_planes, _wmf_planes, numpy_path
from models.pipeline.ssn.numba_kernel import _numba_kernel
from models.pipeline.ssn.reference import _ssn_mean_reference


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _stats(values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s) * 1000.0
    return {
        "median": round(float(np.median(ms)), 3),
        "p95": round(float(np.percentile(ms, 95)), 3),
        "n": len(ms),
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, thread CPU seconds)."""
    w0, c0 = time.perf_counter(), time.thread_time()
    result = fn()
    return result, time.perf_counter() - w0, time.thread_time() - c0


def _frames(n: int, seed: int) -> list[np.ndarray]:
    """n simulated 12-bit frames from different wells that pass exposure QC."""
    sim = SimulationConfig(seed=seed)
    frames: list[np.ndarray] = []
    for well in SBS_96.well_names:
        cx, cy = SBS_96.well_center_um(well)
        frame = render_field(sim, "BENCH-0001", well, cx, cy, "40x")
        if not pl.quality_check(pl.to_uint8(frame, sim.bit_depth), PipelineConfig()).excluded:
            frames.append(frame)
        if len(frames) == n:
            break
    return frames


def stage_timings(frames: list[np.ndarray], repeats: int, have_numba: bool) -> dict[str, Any]:
    """(a): every stage of one frame back to back, ``repeats`` times over the frames."""
    config = PipelineConfig()
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    def record(name: str, fn: Callable[[], Any]) -> Any:
        result, w, c = _timed(fn)
        wall.setdefault(name, []).append(w)
        cpu.setdefault(name, []).append(c)
        return result

    ssn_args = (config.ws, config.k, config.spatial_weight)
    gc.collect()
    gc.disable()
    try:
        for i in range(repeats):
            frame = frames[i % len(frames)]
            frame8 = record("qc", partial(pl.to_uint8, frame, 12))
            record("qc", partial(pl.quality_check, frame8, config))
            norm = record("normalise", partial(pl.normalise, frame8, config))
            record("focus", partial(pl.focus_score, norm))
            record("mask", partial(pl.foreground_mask, norm, config))
            planes = record("bands", partial(_band_planes, norm, config))
            x = record("wmf", partial(_wmf_planes, planes))
            record("ssn_numpy", partial(_ssn_mean, x, *ssn_args, backend="numpy"))
            if have_numba:
                record("ssn_numba", partial(_ssn_mean, x, *ssn_args, backend="numba"))
            if i % 3 == 0:  # the old path is slow; a third of the repeats is plenty
                record("ssn_reference", partial(_ssn_mean_reference, x, *ssn_args))
            record("prepare", partial(pl.prepare, frame, config, bit_depth=12))
    finally:
        gc.enable()

    # "qc" was recorded in two parts per repeat; fold them.
    for series in (wall, cpu):
        series["qc"] = [a + b for a, b in zip(series["qc"][::2], series["qc"][1::2], strict=True)]
    common = ("qc", "normalise", "focus", "mask", "bands", "wmf")
    for series in (wall, cpu):
        base = [sum(series[s][i] for s in common) for i in range(repeats)]
        series["total_numpy"] = [b + s for b, s in zip(base, series["ssn_numpy"], strict=True)]
        if have_numba:
            series["total_numba"] = [b + s for b, s in zip(base, series["ssn_numba"], strict=True)]
        series["total_reference"] = [base[3 * j] + s for j, s in enumerate(series["ssn_reference"])]
    return {
        "wall_ms": {k: _stats(v) for k, v in wall.items()},
        "cpu_ms": {k: _stats(v) for k, v in cpu.items()},
    }


def oracle_ratio(frame: np.ndarray, have_numba: bool) -> dict[str, Any]:
    """(b): the loop oracle vs the fast path on a 24 x 32 crop of real bands, WS = 9, K = 12."""
    config = PipelineConfig()
    norm = pl.normalise(pl.to_uint8(frame, 12), config)
    cube = np.ascontiguousarray(pl.band_stack(norm, config)[100:124, 140:172])
    x = np.ascontiguousarray(pl.weighted_mean_filter(cube).transpose(2, 0, 1))
    args = (config.ws, config.k, config.spatial_weight)
    oracle_s = []
    want = None
    for _ in range(2):
        want, w, _ = _timed(partial(ssn_oracle, cube, *args))
        oracle_s.append(w)
    result: dict[str, Any] = {"crop": list(cube.shape), "oracle_ms": _stats(oracle_s)["median"]}
    backends: list[pl.SSNBackend] = ["numpy", "numba"] if have_numba else ["numpy"]
    for backend in backends:
        fast_s = []
        got = None
        for _ in range(50):
            got, w, _ = _timed(partial(_ssn_mean, x, *args, backend=backend))
            fast_s.append(w)
        fast_ms = _stats(fast_s)["median"]
        assert got is not None and want is not None
        result[backend] = {
            "fast_ms": fast_ms,
            "oracle_over_fast": round(result["oracle_ms"] / fast_ms, 1),
            "max_abs_diff_vs_float64_oracle": float(np.abs(got.transpose(1, 2, 0) - want).max()),
        }
    return result


def grid(frame: np.ndarray, repeats: int, have_numba: bool, quick: bool) -> dict[str, Any]:
    """(c): SSN (weighted-mean filter + neighbours) cost over WS and K, and strip heights."""
    base = PipelineConfig()
    x = _band_planes(pl.normalise(pl.to_uint8(frame, 12), base), base)
    backends: list[pl.SSNBackend] = ["numpy", "numba"] if have_numba else ["numpy"]

    def cost(ws: int, k: int, backend: pl.SSNBackend) -> float:
        PipelineConfig(ws=ws, k=k)  # validates the grid point
        samples = []
        for _ in range(repeats):
            _, _, c = _timed(partial(_wmf_and_ssn, x, ws, k, backend))
            samples.append(c)
        return _stats(samples)["median"]

    windows = (1, 5, 9, 13) if quick else (1, 3, 5, 7, 9, 11, 13)
    ks = (2, 8, 12, 16) if quick else tuple(range(2, 17))
    out: dict[str, Any] = {"ws_at_k12": {}, "k_at_ws9": {}, "strip_rows_numpy": {}}
    for backend in backends:
        out["ws_at_k12"][backend] = {ws: cost(ws, _k_for(ws), backend) for ws in windows}
        out["k_at_ws9"][backend] = {k: cost(9, k, backend) for k in ks}
    default = numpy_path._STRIP_ROWS
    try:
        for rows in (220, 110, 74, 55, 37):
            numpy_path._STRIP_ROWS = rows
            out["strip_rows_numpy"][rows] = cost(9, 12, "numpy")
    finally:
        numpy_path._STRIP_ROWS = default
    out["strip_rows_default"] = default
    return out


def _wmf_and_ssn(x: np.ndarray, ws: int, k: int, backend: pl.SSNBackend) -> np.ndarray:
    filtered = _wmf_planes(x)
    return _ssn_mean(filtered, ws, k, 0.5, backend=backend) if ws > 1 else filtered


def _bands_and_ssn(norm: np.ndarray, config: PipelineConfig) -> np.ndarray:
    return _ssn_planes(_band_planes(norm, config), config)


def _k_for(ws: int) -> int:
    """K = 12 where the window allows it (WS = 3 has 8 neighbours; WS = 1 ignores K)."""
    return 12 if ws == 1 else min(12, ws * ws - 1)


def onnx_hsm(frames: list[np.ndarray], repeats: int) -> dict[str, Any]:
    """(d): the HSM as an ONNX graph: parity with numpy and onnxruntime CPU time."""
    try:
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"needs torch (export) and onnxruntime: {exc}"}
    from models import hsm_onnx

    config = PipelineConfig()
    norms = [pl.normalise(pl.to_uint8(f, 12), config) for f in frames[:4]]
    with tempfile.TemporaryDirectory() as tmp:
        path = hsm_onnx.export_hsm_onnx(config, Path(tmp) / "hsm.onnx")
        size = path.stat().st_size
        result: dict[str, Any] = {"graph_bytes": size}
        for threads in (1, 0):
            runner = hsm_onnx.HsmOnnxRunner(path, threads=threads)
            if threads == 1:
                result["parity"] = hsm_onnx.parity(runner, norms, config).to_dict()
            runner.run(norms[0])  # warm-up: first run allocates
            samples = [_timed(partial(runner.run, n))[1] for n in (norms * repeats)[:repeats]]
            result["ort_cpu_1_thread_ms" if threads == 1 else "ort_cpu_default_threads_ms"] = (
                _stats(samples)
            )
        numpy_samples = []
        for n in (norms * repeats)[:repeats]:
            _, w, _ = _timed(partial(_bands_and_ssn, n, config))
            numpy_samples.append(w)
        result["numpy_bands_wmf_ssn_ms"] = _stats(numpy_samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="per-stage repeats (a)")
    parser.add_argument("--grid-repeats", type=int, default=5, help="repeats per grid point (c)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller grid")
    parser.add_argument("--no-onnx", action="store_true", help="skip (d)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.grid_repeats = 9, 3

    cv2.setNumThreads(1)
    started = time.perf_counter()
    load_start = _load()
    kernel_s = _timed(_numba_kernel)[1]  # compile or load the numba kernel outside timings
    have_numba = _numba_kernel() is not None
    frames = _frames(8, seed=0)
    default = PipelineConfig()
    for frame in frames[:2]:  # warm caches, workspaces, selection programs
        pl.prepare(frame, default, bit_depth=12)
        planes = _band_planes(pl.normalise(pl.to_uint8(frame, 12), default), default)
        _ssn_mean_reference(_wmf_planes(planes), 9, 12, 0.5)

    result: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_at_start": load_start,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "numba": _version("numba") if have_numba else None,
        "numba_kernel_load_s": round(kernel_s, 2),
        "frame": {"shape": list(frames[0].shape), "dtype": str(frames[0].dtype), "bits": 12},
        "config": {"height": 220, "width": 300, "bands": 6, "ws": 9, "k": 12},
    }
    result["stages"] = stage_timings(frames, args.repeats, have_numba)
    wall = result["stages"]["wall_ms"]
    cpu = result["stages"]["cpu_ms"]
    result["old_over_new"] = {
        "ssn_numpy": round(cpu["ssn_reference"]["median"] / cpu["ssn_numpy"]["median"], 2),
        "total_numpy": round(cpu["total_reference"]["median"] / cpu["total_numpy"]["median"], 2),
    }
    if have_numba:
        result["old_over_new"]["ssn_numba"] = round(
            cpu["ssn_reference"]["median"] / cpu["ssn_numba"]["median"], 2
        )
        result["old_over_new"]["total_numba"] = round(
            cpu["total_reference"]["median"] / cpu["total_numba"]["median"], 2
        )
    result["oracle"] = oracle_ratio(frames[0], have_numba)
    result["grid_cpu_ms"] = grid(frames[0], args.grid_repeats, have_numba, args.quick)
    if not args.no_onnx:
        result["onnx_hsm"] = onnx_hsm(frames, max(5, args.repeats // 3))
    result["load_at_end"] = _load()
    result["total_s"] = round(time.perf_counter() - started, 1)

    _print_report(result, wall, cpu)
    print("RESULT " + json.dumps(result, sort_keys=True))


def _version(module: str) -> str:
    return str(getattr(__import__(module), "__version__", "?"))


def _print_report(result: dict[str, Any], wall: dict[str, Any], cpu: dict[str, Any]) -> None:
    print(
        f"load {result['load_at_start']} -> {result['load_at_end']} on {result['cpus']} CPUs; "
        f"numpy {result['numpy']}, OpenCV {result['opencv']}, numba {result['numba']}"
    )
    print(f"{'stage':<16}{'wall median':>12}{'wall p95':>10}{'cpu median':>12}{'cpu p95':>10}")
    for name in wall:
        print(
            f"{name:<16}{wall[name]['median']:>12.2f}{wall[name]['p95']:>10.2f}"
            f"{cpu[name]['median']:>12.2f}{cpu[name]['p95']:>10.2f}"
        )
    print("old / new (CPU medians):", result["old_over_new"])
    print("loop oracle vs fast:", result["oracle"])
    for key, value in result["grid_cpu_ms"].items():
        print(f"grid {key}: {value}")
    if "onnx_hsm" in result:
        print("ONNX HSM:", result["onnx_hsm"])
    print(f"took {result['total_s']} s")


if __name__ == "__main__":
    main()
