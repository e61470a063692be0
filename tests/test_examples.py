"""The examples run end to end: each `--quick` run exits 0, writes its PNGs and summary.json, and its figures are
finite and meet bounds that a quick run holds with a wide margin (the figures measured are in the comments)."""

from __future__ import annotations

import importlib
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sdescore.training import load_checkpoint

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


# ------------------------------------------------------------------------------------------ the command line
# Refusals at parse time need no training: the example's main() runs in this process with `_common.start` replaced
# by a stop, so a command line that parse accepts fails the test at once instead of training.


class _Accepted(Exception):
    """Raised where an example would start its run: parse accepted the command line."""


def _example_module(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def parse_only(name: str, args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of examples/NAME.py ARGS, stopped before its run starts."""
    module = _example_module(name)

    def stop(cfg):
        raise _Accepted(cfg)  # str(): the settings parse accepted

    monkeypatch.setattr(module._common, "start", stop)
    monkeypatch.setattr(sys, "argv", [f"examples/{name}.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("toy_2d", ["--n-samples", "1"], "argument --n-samples: must be an integer >= 2 (the energy distance"),
        ("toy_2d", ["--n-samples", "-5"], "argument --n-samples: must be an integer >= 2"),
        ("ncsn_ve", ["--n-samples", "0"], "argument --n-samples: must be an integer >= 2"),
        ("vp_bits_per_dim", ["--n-samples", "1"], "argument --n-samples: must be an integer >= 2"),
        ("vp_bits_per_dim", ["--n-bpd", "0"], "argument --n-bpd: must be an integer >= 1, got 0"),
        ("ncsn_ve", ["--n-steps-each", "0"], "argument --n-steps-each: must be an integer >= 1, got 0"),
        ("ncsn_ve", ["--step-lr", "0"], "argument --step-lr: must be a finite number > 0, got 0"),
        ("ncsn_ve", ["--step-lr=-1e-5"], "argument --step-lr: must be a finite number > 0, got -1e-5"),
        ("toy_2d", ["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
        ("toy_2d", ["--batch-size", "-1"], "argument --batch-size: must be an integer >= 1, got -1"),
        ("toy_2d", ["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
        ("toy_2d", ["--checkpoint-every", "0"], "argument --checkpoint-every: must be an integer >= 1, got 0"),
        ("toy_2d", ["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
        ("toy_2d", ["--seed", "-1"], "argument --seed: must be an integer in [0, 2**63), got -1"),
        ("toy_2d", ["--seed", str(2**63)], f"argument --seed: must be an integer in [0, 2**63), got {2**63}"),
    ],
)
def test_examples_refuse_bad_flag_values_before_the_run_naming_the_flag(name, args, message, monkeypatch, capsys):
    status, _, err = parse_only(name, ["--quick", *args], monkeypatch, capsys)
    assert status == 2 and message in err, err


def test_examples_accept_the_edges_of_the_flag_ranges(monkeypatch, capsys):
    args = ["--quick", "--n-samples", "2", "--seed", str(2**63 - 1), "--steps", "1", "--lr", "1e-30"]
    with pytest.raises(_Accepted):
        parse_only("toy_2d", args, monkeypatch, capsys)


def test_examples_refuse_an_out_that_names_a_file(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    status, _, err = parse_only("toy_2d", ["--quick", "--out", str(afile)], monkeypatch, capsys)
    assert status == 2 and f"--out must name a folder, but {afile} is a file" in err, err
    status, _, err = parse_only("ncsn_ve", ["--quick", "--out", str(afile / "sub")], monkeypatch, capsys)
    assert status == 2 and f"--out must name a folder, but {afile} (which {afile / 'sub'} lies under) is a file" in err


def _help_entries(text: str) -> dict[str, str]:
    """The option entries of an argparse --help: first flag -> its help, whitespace collapsed."""
    entries: dict[str, str] = {}
    flag = None
    for line in text.split("\n\n", 2)[2].splitlines():  # after the usage and the description
        match = re.match(r"  (--?[\w-]+)", line)
        if match:
            flag = match.group(1)
            entries[flag] = ""
        elif not line.startswith("    ") and flag is not None and not line.startswith("  "):
            flag = None
        if flag is not None:
            entries[flag] = " ".join((entries[flag] + " " + line).split())
    return entries


@pytest.mark.parametrize("name", ["toy_2d", "ncsn_ve", "vp_bits_per_dim"])
def test_help_lists_every_presets_values_from_its_table_and_sends_their_defaults_there(name, monkeypatch, capsys):
    presets = _example_module(name).PRESETS
    status, text, _ = parse_only(name, ["--help"], monkeypatch, capsys)
    assert status == 0
    options, _, epilog = text.partition("presets (--quick is --preset quick")
    assert epilog, "no table of the presets in --help"
    entries = _help_entries(options)
    keys = {key for preset in presets.values() for key in preset}
    flagged = {key for key in keys if f"--{key.replace('_', '-')}" in entries}
    assert {"steps", "batch_size", "lr", "n_samples", "checkpoint_every"} <= flagged
    for key in flagged:
        help_text = entries[f"--{key.replace('_', '-')}"]
        assert "(default: from the preset" in help_text, (key, help_text)
    assert "default digits" not in text  # --dataset's default is the preset's: cifar10 under cifar10-paper
    # each preset's block: its flags with their values, then its other settings as key=value
    blocks = re.split(r"\n  ([\w-]+):\n", "\n" + epilog.split(":", 1)[1])
    table = dict(zip(blocks[1::2], (" ".join(b.split()) for b in blocks[2::2])))
    assert list(table) == list(presets)
    for preset, values in presets.items():
        for key, value in values.items():
            flag = f"--{key.replace('_', '-')}"
            pattern = rf"(^| ){re.escape(f'{flag} {value}')}( |$)" if key in flagged else rf"(^| ){re.escape(key)}="
            assert re.search(pattern, table[preset]), (preset, key, value, table[preset])


def test_toy_2d_writes_each_sde_to_its_own_default_folder(monkeypatch, capsys):
    for sde in ("vp", "ve"):
        with pytest.raises(_Accepted) as accepted:
            parse_only("toy_2d", ["--quick", "--sde", sde], monkeypatch, capsys)
        assert accepted.value.args[0].out == Path("out") / f"toy_2d_{sde}"


# ------------------------------------------------------------------------------------------ --resume
def run_until_checkpoint(name: str, out: Path, step: int, *args: str) -> str:
    """Run examples/NAME.py --quick --no-progress --out OUT ARGS until OUT/checkpoint.pt holds `step`, then stop it
    (the evaluation after training is not needed); return its stdout."""
    cmd = [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--no-progress", "--out", str(out), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint, deadline = out / "checkpoint.pt", time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if checkpoint.is_file() and load_checkpoint(checkpoint)["step"] == step:  # written atomically: whole
                break
            time.sleep(0.1)
        else:
            stdout, stderr = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
            raise AssertionError(f"{' '.join(cmd)} wrote no checkpoint at step {step}\n{stdout[-2000:]}\n{stderr[-2000:]}")
    finally:
        proc.kill()
    return proc.communicate(timeout=60)[0]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """OUT of a VP toy_2d run of 20 steps (quick preset otherwise): its checkpoint and settings record."""
    out = tmp_path_factory.mktemp("toy") / "vp20"
    run_until_checkpoint("toy_2d", out, 20, "--steps", "20", "--checkpoint-every", "20")
    return out


@pytest.fixture
def toy_out(toy_run, tmp_path) -> Path:
    """A copy of toy_run's folder for one test."""
    return Path(shutil.copytree(toy_run, tmp_path / "out"))


@pytest.mark.parametrize(
    "args, differences",
    [
        (["--quick", "--sde", "ve"], ["--sde vp (this run: ve)"]),
        (["--quick", "--seed", "1"], ["--seed 0 (this run: 1)"]),
        (["--quick", "--batch-size", "256"], ["--batch-size 512 (this run: 256)"]),
        (  # the default preset's network
            ["--preset", "default"],
            ["depth 3 (this run: 4), set by the preset", "hidden 128 (this run: 256), set by the preset",
             "n_train 20000 (this run: 100000), set by the preset"],
        ),
    ],
    ids=["sde", "seed", "batch-size", "preset's network"],
)
def test_resume_refuses_a_checkpoint_of_other_settings_naming_them(toy_out, args, differences, monkeypatch, capsys):
    cmd = [*args, "--steps", "40", "--resume", "--out", str(toy_out)]
    status, _, err = parse_only("toy_2d", cmd, monkeypatch, capsys)
    err = " ".join(err.split())
    assert status == 2 and f"--resume: {toy_out / 'checkpoint.pt'} was trained with other settings: " in err, err
    assert "; ".join(differences) + ". Pass them as they were to continue it" in err, err


def test_resume_refuses_a_checkpoint_beyond_steps(toy_out, monkeypatch, capsys):
    status, _, err = parse_only("toy_2d", ["--quick", "--steps", "10", "--resume", "--out", str(toy_out)], monkeypatch, capsys)
    err = " ".join(err.split())
    assert status == 2 and f"{toy_out / 'checkpoint.pt'} is at step 20, beyond --steps 10" in err, err
    with pytest.raises(_Accepted):  # at --steps 20 the checkpoint is taken as it is
        parse_only("toy_2d", ["--quick", "--steps", "20", "--resume", "--out", str(toy_out)], monkeypatch, capsys)


def test_resume_refuses_a_checkpoint_without_its_settings_record(toy_out, monkeypatch, capsys):
    (toy_out / "checkpoint_settings.json").unlink()
    status, _, err = parse_only("toy_2d", ["--quick", "--resume", "--out", str(toy_out)], monkeypatch, capsys)
    err = " ".join(err.split())
    assert status == 2 and f"{toy_out / 'checkpoint.pt'} has no checkpoint_settings.json beside it" in err, err


def test_resume_with_the_same_settings_continues_the_checkpoint(toy_out):
    before = load_checkpoint(toy_out / "checkpoint.pt")["losses"]
    run_until_checkpoint("toy_2d", toy_out, 25, "--steps", "25", "--checkpoint-every", "25", "--resume")
    after = load_checkpoint(toy_out / "checkpoint.pt")["losses"]
    assert after.shape == (25,) and torch.equal(after[:20], before)  # the first 20 steps are the checkpoint's


def test_a_run_without_resume_replaces_the_checkpoint_and_its_settings_record(toy_out):
    stdout = run_until_checkpoint("toy_2d", toy_out, 5, "--sde", "ve", "--steps", "5", "--checkpoint-every", "5")
    assert f"removed the earlier run's {toy_out / 'checkpoint.pt'} (no --resume)" in stdout
    record = json.loads((toy_out / "checkpoint_settings.json").read_text())
    assert record == {
        "example": "toy_2d",
        "settings": {"seed": 0, "batch_size": 512, "sde": "ve", "hidden": 128, "depth": 3, "n_train": 20000},
    }


def test_the_examples_json_records_are_written_atomically(tmp_path, monkeypatch):
    """summary.json and checkpoint_settings.json go through one writer: a temporary file, fsync, os.replace. A
    write that fails before the replace leaves the previous record whole and no temporary file behind (summary.json
    was written in place: a crash mid-write left a truncated record); values JSON cannot hold are written as text."""
    common = _example_module("_common")
    path = tmp_path / "summary.json"
    common._write_json_atomically(path, {"ok": True, "out": tmp_path})
    assert json.loads(path.read_text()) == {"ok": True, "out": str(tmp_path)}

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(common.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        common._write_json_atomically(path, {"ok": False})
    assert json.loads(path.read_text()) == {"ok": True, "out": str(tmp_path)}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
