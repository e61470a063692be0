"""The examples run end to end: each `--quick` run exits 0, writes its PNGs and summary.json, and its figures are
finite and meet bounds that a quick run holds with a wide margin (the figures measured are in the comments)."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT = 600  # seconds; each quick run takes about a minute on 2 CPU cores
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_example(name: str, out: Path, *args: str, launcher: tuple[str, ...] = ()) -> dict:
    """Run examples/NAME.py --quick in a subprocess from the repository root; return its summary.json."""
    script = str(EXAMPLES / f"{name}.py")
    cmd = [*(launcher or (sys.executable,)), script, "--quick", "--no-progress", "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited with status {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["failures"] == [], summary["failures"]
    for key, value in summary["figures"].items():
        assert isinstance(value, (int, float)) and math.isfinite(value), f"{name}: figure {key} = {value!r}"
    return summary


def assert_pngs(out: Path, names: list[str]) -> None:
    for name in names:
        path = out / name
        assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, f"{path} is missing or not a PNG"


def assert_samples_npz(out: Path, samplers: list[str], shape: tuple[int, ...]) -> None:
    with np.load(out / "samples.npz") as npz:
        assert sorted(npz.files) == sorted(samplers)
        for name in samplers:
            assert npz[name].dtype == np.uint8 and npz[name].shape == shape, (name, npz[name].dtype, npz[name].shape)


@pytest.mark.slow
def test_toy_2d_quick_matches_the_exact_mixture_within_loose_bounds(tmp_path):
    summary = run_example("toy_2d", tmp_path)
    fig = summary["figures"]
    assert_pngs(tmp_path, ["samples.png", "score_field.png", "loss.png"])
    for which in ("learned", "exact"):
        for sampler in ("reverse_sde", "pc", "ode"):
            # the largest error of the 8 recovered mode weights (true 1/8 each); measured 0.015-0.025
            assert fig[f"{which}_{sampler}_mode_err"] <= 0.1, (which, sampler)
            assert fig[f"{which}_{sampler}_nfe"] > 0
    # mean log-likelihood of the trained model through the ODE vs the analytic mean log-density; measured 0.04 nats
    assert abs(fig["loglik_model"] - fig["loglik_analytic"]) <= 0.5
    # the same ODE with the exact score isolates the solver: measured below 1e-4 nats
    assert abs(fig["loglik_exact_score_ode"] - fig["loglik_analytic"]) <= 0.01
    # at t = 0.5 the score is smooth and learned well: measured 6e-4
    assert fig["score_rel_mse_t0.5"] <= 0.1


@pytest.mark.slow
def test_ncsn_ve_quick_on_digits_trains_and_samples_three_ways(tmp_path):
    fig = run_example("ncsn_ve", tmp_path)["figures"]
    samplers = ["annealed_langevin", "pc", "ode"]
    assert_pngs(tmp_path, ["data.png", "loss.png", *(f"samples_{s}.png" for s in samplers)])
    assert_samples_npz(tmp_path, samplers, (64, 1, 8, 8))
    assert fig["test_loss_vs_zero_score"] < 0.9  # measured 0.38: the network learned much of the score
    for s in samplers:
        assert 0.0 <= fig[f"{s}_mean_pixel"] <= 1.0
        assert fig[f"{s}_nfe"] > 0
    assert fig["annealed_langevin_nfe"] == 10 * 10 + 1  # L levels x n_steps_each, plus the denoising step


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (LeCun's MNIST format) of uint8 data: magic 0x00000803 or 0x00000801, big-endian sizes, bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.mark.slow
def test_ncsn_ve_reads_fashion_mnist_idx_files_from_data_dir(tmp_path):
    data_dir, out = tmp_path / "fashion", tmp_path / "out"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 48), ("t10k", 16)):
        write_idx(data_dir / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(data_dir / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    summary = run_example(
        "ncsn_ve", out, "--dataset", "fashion-mnist", "--data-dir", str(data_dir),
        "--steps", "30", "--batch-size", "16", "--n-samples", "8",
    )
    assert summary["settings"]["dataset"] == "fashion-mnist"
    assert_pngs(out, ["data.png", "loss.png", "samples_annealed_langevin.png", "samples_pc.png", "samples_ode.png"])
    assert_samples_npz(out, ["annealed_langevin", "pc", "ode"], (8, 1, 28, 28))


@pytest.mark.slow
def test_vp_bits_per_dim_quick_beats_the_uniform_model_on_digits(tmp_path):
    fig = run_example("vp_bits_per_dim", tmp_path)["figures"]
    assert_pngs(tmp_path, ["data.png", "loss.png", "samples_ddpm_ancestral.png", "samples_ode.png"])
    assert_samples_npz(tmp_path, ["ddpm_ancestral", "ode"], (64, 1, 8, 8))
    assert fig["uniform_bpd"] == pytest.approx(math.log2(17))  # digits: 17 levels
    assert 0.0 < fig["test_bpd"] < fig["uniform_bpd"]  # measured 2.57 against 4.09
    assert fig["test_loss_vs_zero_net"] < 0.9  # measured 0.10
    assert fig["ddpm_ancestral_nfe"] == 100  # one network evaluation per step of the chain


@pytest.mark.slow
def test_toy_2d_runs_under_torchrun_with_two_processes(tmp_path):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    summary = run_example("toy_2d", tmp_path, "--steps", "100", "--n-samples", "300", launcher=launcher)
    assert summary["world_size"] == 2
    assert_pngs(tmp_path, ["samples.png", "score_field.png", "loss.png"])


def test_an_unknown_device_name_stops_an_example_with_a_message(tmp_path):
    cmd = [sys.executable, str(EXAMPLES / "toy_2d.py"), "--quick", "--no-progress", "--device", "gpu", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1 and "--device must name a torch device such as cpu, cuda or cuda:1, got 'gpu'" in proc.stderr


def test_an_example_exits_with_status_1_and_says_why_when_the_loss_diverges(tmp_path):
    cmd = [sys.executable, str(EXAMPLES / "toy_2d.py"), "--quick", "--no-progress", "--lr", "1e30", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED: FloatingPointError: the loss became" in proc.stderr
