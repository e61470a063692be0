"""Plumbing shared by the examples: command line and presets, threads, torchrun, device, output folder, summary.

Nothing here is score-based modelling: the SDEs, losses, training calls, samplers and likelihoods are written
out in each script, top to bottom. This module only saves them from repeating the same argparse lines, the
torchrun set-up and the summary file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import Tensor

import sdescore as sds
from sdescore import data as sdata

_T0 = time.perf_counter()  # the clock of the summary starts once the imports are done
os.environ.setdefault("MPLBACKEND", "Agg")  # figures are files: no display, whatever matplotlib finds installed

# ---------------------------------------------------------------------------------------------- command line


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the image examples: which dataset, where its files are, how many images each sampler draws."""
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="images to train on (default digits)")
    parser.add_argument("--data-dir", type=Path, help="folder of the dataset's files (not needed for digits)")
    parser.add_argument("--n-samples", type=int, help="images drawn by each sampler")


def make_parser(doc: str, name: str, presets: dict[str, dict[str, Any]]) -> argparse.ArgumentParser:
    """The flags every example shares; a script adds its own before `parse`."""
    first, _, rest = doc.strip().partition("\n\n")
    parser = argparse.ArgumentParser(
        prog=f"examples/{name}.py", description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the preset 'quick': about a minute on 2 CPU cores")
    parser.add_argument("--preset", choices=sorted(presets), help="a named set of settings (default: 'default')")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--steps", type=int, help="optimizer steps of the whole run")
    parser.add_argument("--batch-size", type=int, help="global batch size (split over torchrun's processes)")
    parser.add_argument("--lr", type=float, help="peak learning rate of Adam")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random stream (default 0)")
    parser.add_argument("--out", type=Path, default=Path("out") / name, help=f"output folder (default out/{name})")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (OUT/checkpoint.pt)")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue from OUT/checkpoint.pt if it exists (same --seed and --batch-size; --lr and the other "
        "optimiser settings of this command apply from the resumed step)",
    )
    parser.add_argument("--compile", action="store_true", help="train through torch.compile")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bfloat16 autocast on CUDA")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process (default: the CPUs / processes)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def parse(
    parser: argparse.ArgumentParser, presets: dict[str, dict[str, Any]], argv: list[str] | None = None
) -> SimpleNamespace:
    """Parse the command line; every setting left unset on it comes from the chosen preset."""
    args = parser.parse_args(argv)
    if args.quick and args.preset not in (None, "quick"):
        parser.error(f"--quick and --preset {args.preset} are two presets; pass one of them.")
    preset = "quick" if args.quick else args.preset or "default"
    given = {k: v for k, v in vars(args).items() if v is not None or k not in presets[preset]}
    cfg = SimpleNamespace(**{**presets[preset], **given, "preset": preset})
    for key in ("steps", "batch_size"):
        if getattr(cfg, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(cfg, key)}.")
    return cfg


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Where this process stands: torchrun's rank and world size, the device, the output folder, the clock."""

    info: sds.DistributedInfo
    device: torch.device
    out: Path
    start: float = _T0

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the run's device: every sampler and test draws from one, so a rerun repeats."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def log(self, message: str) -> None:
        if self.is_main:
            print(f"[{time.perf_counter() - self.start:7.1f} s] {message}", flush=True)


def start(cfg: SimpleNamespace) -> Run:
    """Threads, torchrun's process group (a single process without torchrun), device and output folder."""
    if cfg.threads is not None:
        torch.set_num_threads(max(1, cfg.threads))
    elif "OMP_NUM_THREADS" not in os.environ:  # torchrun sets it; otherwise share the CPUs between local processes
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if cfg.device is not None:
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise SystemExit(f"--device must name a torch device such as cpu, cuda or cuda:1, got {cfg.device!r}.") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for but CUDA is not available; use --device cpu.")
    info = sds.setup_distributed(cfg.device)  # gloo for --device cpu, nccl on GPUs
    device = info.device
    out = Path(cfg.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    run = Run(info, device, out)
    run.log(
        f"preset {cfg.preset!r} on {device} ({info.world_size} process{'es' if info.world_size > 1 else ''}, "
        f"{torch.get_num_threads()} threads each); writing to {out}"
    )
    return run


def train_options(cfg: SimpleNamespace, run: Run) -> dict[str, Any]:
    """The keyword arguments of sds.train that come from the command line and the preset."""
    return dict(
        batch_size=cfg.batch_size,
        n_steps=cfg.steps,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        grad_clip=cfg.grad_clip,
        ema_decay=cfg.ema_decay,
        seed=cfg.seed,
        device=run.device,
        bf16=cfg.bf16,
        compile_model=cfg.compile,
        checkpoint_path=run.out / "checkpoint.pt",
        checkpoint_every=cfg.checkpoint_every,
        resume=cfg.resume,
        progress=not cfg.no_progress,
    )


def sample_in_batches(sample: Callable[[int, int], sds.SampleResult], n: int, batch_size: int) -> sds.SampleResult:
    """n samples from calls sample(b, i) of at most batch_size each (i: the call's index, to seed it), on the CPU.

    The result's nfe is the mean over the calls (adaptive ODE solvers make a different number per batch).
    """
    xs, nfes = [], []
    for i, first in enumerate(range(0, n, batch_size)):
        out = sample(min(batch_size, n - first), i)
        xs.append(out.x.cpu())
        nfes.append(out.nfe)
    return sds.SampleResult(x=torch.cat(xs), nfe=round(sum(nfes) / len(nfes)))


# ---------------------------------------------------------------------------------------------- images


def _digits(root: Path | None, split: str) -> sdata.Images:
    # sklearn's 1797 digits have no test split: hold out a fixed 297 of them.
    full = sdata.load_digits()
    order = torch.randperm(full.images.shape[0], generator=torch.Generator().manual_seed(0))
    idx = order[:1500] if split == "train" else order[1500:]
    return sdata.Images(full.images[idx], full.labels[idx])


def _needs_root(loader: Callable[..., sdata.Images], name: str) -> Callable[[Path | None, str], sdata.Images]:
    def load(root: Path | None, split: str) -> sdata.Images:
        if root is None:
            raise SystemExit(f"--dataset {name} needs --data-dir DIR, the folder holding its files.")
        return loader(root, split)

    return load


# One registry for --dataset: name -> (root, split) -> Images(uint8 (N, C, H, W), labels), from sdescore.data.
DATASETS: dict[str, Callable[[Path | None, str], sdata.Images]] = {
    "digits": _digits,
    "mnist": _needs_root(sdata.load_mnist, "mnist"),
    "fashion-mnist": lambda root, split: sdata.load_fashion_mnist(root, split),  # root None: FASHION_MNIST_DIR
    "cifar10": _needs_root(sdata.load_cifar10, "cifar10"),
}


def load_images(name: str, root: Path | None) -> tuple[sdata.Images, sdata.Images]:
    """(train, test) of a data set of DATASETS, as sdescore.data returns them (uint8 pixels 0..255)."""
    return DATASETS[name](root, "train"), DATASETS[name](root, "test")


# ---------------------------------------------------------------------------------------------- summary


class Summary:
    """Figures with their meaning, printed as a table and written to OUT/summary.json."""

    def __init__(self, name: str, cfg: SimpleNamespace, run: Run):
        self.name, self.cfg, self.run = name, cfg, run
        self.figures: dict[str, float | int] = {}
        self.meanings: dict[str, str] = {}
        self.failures: list[str] = []

    def add(self, key: str, value: float | int | Tensor, meaning: str) -> None:
        if isinstance(value, Tensor):
            value = value.item()
        self.figures[key] = value
        self.meanings[key] = meaning

    def add_training(self, losses: list[float], what: str) -> None:
        """The mean loss over the last tenth of training as `train_loss`, and a failure unless it lies below the
        first tenth's (a run that learned nothing)."""
        k = max(1, len(losses) // 10)
        last = sum(losses[-k:]) / k
        self.add("train_loss", last, f"{what} over the last tenth of training")
        if not (len(losses) >= 2 and last < sum(losses[:k]) / k):
            self.fail("the training loss did not decrease")

    def fail(self, message: str) -> None:
        """Record something badly wrong: the script then exits with status 1."""
        self.failures.append(message)

    def finish(self) -> int:
        """Print the table, write summary.json; return the exit status (1 on a failure or a non-finite figure)."""
        bad = [k for k, v in self.figures.items() if not math.isfinite(float(v))]
        self.failures += [f"figure {k} is {self.figures[k]}" for k in bad]
        seconds = time.perf_counter() - self.run.start
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.cfg).items()}
        record = {
            "example": self.name,
            "preset": self.cfg.preset,
            "device": str(self.run.device),
            "world_size": self.run.info.world_size,
            "wall_seconds": seconds,
            "ok": not self.failures,
            "failures": self.failures,
            "figures": {k: (v if math.isfinite(float(v)) else str(v)) for k, v in self.figures.items()},
            "meanings": self.meanings,
            "settings": settings,
        }
        path = self.run.out / "summary.json"
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        width = max(map(len, self.figures), default=10)
        print(f"\n== {self.name}: summary ({self.cfg.preset}, {seconds:.0f} s) ==")
        for key, value in self.figures.items():
            shown = f"{value:d}" if isinstance(value, int) else f"{value:.4g}"
            print(f"  {key:<{width}}  {shown:>10}   {self.meanings[key]}")
        written = sorted(p.name for p in self.run.out.iterdir() if p.suffix in (".png", ".json", ".npz"))
        print(f"  written to {self.run.out}: {', '.join(written)}")
        for failure in self.failures:
            print(f"FAILED: {failure}", file=sys.stderr)
        return 1 if self.failures else 0


def main_guard(main: Callable[[], int]) -> None:
    """Run main; a non-finite loss or sample becomes exit status 1 with its message; always leave the process group."""
    try:
        status = main()
    except FloatingPointError as err:  # sds.train's non-finite loss and sds.NonFiniteError from the samplers
        print(f"FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        status = 1
    finally:
        sds.teardown_distributed()
    sys.exit(status)
