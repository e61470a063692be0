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
import textwrap
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

CHECKPOINT = "checkpoint.pt"
# The settings that define the model of OUT/checkpoint.pt, written beside it when a run starts: --resume continues
# a checkpoint only under the same settings (a VE run resumed as VP would train one network on two SDEs).
CHECKPOINT_SETTINGS = "checkpoint_settings.json"


def int_at_least(minimum: int, why: str = "", *, below: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum (and < below, a power of two, if given); argparse's error names the
    flag ("argument --steps: ...")."""
    want = f"an integer >= {minimum}{why}" if below is None else f"an integer in [{minimum}, 2**{below.bit_length() - 1})"

    def parse_int(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if value < minimum or (below is not None and value >= below):
            raise argparse.ArgumentTypeError(f"must be {want}, got {value}")
        return value

    return parse_int


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


# a seed in [0, 2^63), so that the seeds derived from it (seed + k) are torch seeds too
seed = int_at_least(0, below=2**63)

# --n-samples: every example measures its samples by energy distances, which need two samples at least
n_samples = int_at_least(2, " (the energy distance compares two samples at least)")


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the image examples: which dataset, where its files are, how many images each sampler draws."""
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="images to train on")
    parser.add_argument("--data-dir", type=Path, help="folder of the dataset's files (not needed for digits)")
    parser.add_argument("--n-samples", type=n_samples, help="images drawn by each sampler")


@dataclass(frozen=True)
class _Example:
    """What `parse` needs to know of the script besides its flags (kept on the parser by `make_parser`)."""

    name: str
    out: str  # default output folder, a format string of the settings, e.g. "out/toy_2d_{sde}"
    model_settings: tuple[str, ...]  # the settings that define the model, recorded beside its checkpoint


def make_parser(
    doc: str, name: str, presets: dict[str, dict[str, Any]], *, model_settings: tuple[str, ...], out: str | None = None
) -> argparse.ArgumentParser:
    """The flags every example shares; a script adds its own before `parse`.

    model_settings: the settings (flags or preset keys) that define the trained model, besides --seed and
    --batch-size: --resume refuses a checkpoint trained with other values. out: the default --out, a format
    string of the settings (default "out/NAME").
    """
    first, _, rest = doc.strip().partition("\n\n")
    out = out or f"out/{name}"
    parser = argparse.ArgumentParser(
        prog=f"examples/{name}.py", description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.example = _Example(name, out, ("seed", "batch_size", *model_settings))  # type: ignore[attr-defined]
    parser.add_argument("--quick", action="store_true", help="the preset 'quick': about a minute on 2 CPU cores")
    parser.add_argument("--preset", choices=sorted(presets), help="a named set of settings (default: 'default')")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--steps", type=int_at_least(1), help="optimizer steps of the whole run")
    parser.add_argument(
        "--batch-size", type=int_at_least(1), help="global batch size (split over torchrun's processes)"
    )
    parser.add_argument("--lr", type=positive_float, help="peak learning rate of Adam")
    parser.add_argument("--seed", type=seed, default=0, help="seed of every random stream, in [0, 2**63) (default 0)")
    parser.add_argument("--out", type=Path, help=f"output folder (default {out.replace('{', '<').replace('}', '>')})")
    parser.add_argument(
        "--checkpoint-every", type=int_at_least(1), help=f"steps between checkpoints (OUT/{CHECKPOINT})"
    )
    parser.add_argument(
        "--resume", action="store_true",
        help=f"continue from OUT/{CHECKPOINT} if it exists: refused unless this run has the settings recorded in "
        f"OUT/{CHECKPOINT_SETTINGS} (--seed, --batch-size and those that define the model) and --steps at least the "
        "checkpoint's step; --lr and the other optimiser settings of this command apply from the resumed step. "
        "Without --resume a run replaces the checkpoint in OUT",
    )
    parser.add_argument("--compile", action="store_true", help="train through torch.compile")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bfloat16 autocast on CUDA")
    parser.add_argument(
        "--threads", type=int_at_least(1),
        help="torch CPU threads per process (default: from the preset where it sets one, else the CPUs / processes)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the flag that sets it ("n_samples" -> "--n-samples")."""
    return {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}


def _shown(value: Any) -> str:
    """A preset's value in the epilog, without spaces (so that a wrapped line never splits one)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(map(_shown, value)) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def describe_presets(parser: argparse.ArgumentParser, presets: dict[str, dict[str, Any]]) -> str:
    """The epilog's table of the presets, made from the preset tables: per preset, the flags it sets with their
    values, then the settings that have no flag."""
    flags = _flags(parser)
    lines = ["presets (--quick is --preset quick; a flag on the command line overrides its preset's value):"]
    for name, preset in presets.items():
        lines.append(f"  {name}:")
        with_flag = " ".join(f"{flags[k]} {_shown(v)}" for k, v in preset.items() if k in flags)
        without = " ".join(f"{k}={_shown(v)}" for k, v in preset.items() if k not in flags)
        for text in (with_flag, without):
            if text:
                lines.append(textwrap.fill(text, 116, initial_indent="    ", subsequent_indent="    ",
                                           break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines)


def parse(
    parser: argparse.ArgumentParser, presets: dict[str, dict[str, Any]], argv: list[str] | None = None
) -> SimpleNamespace:
    """Parse the command line; every setting left unset on it comes from the chosen preset.

    Bad values stop here with parser.error naming the flag, before any data is loaded or any step trained: the
    flags' types (int_at_least, positive_float, seed), --out naming a file, and a --resume that would not continue
    the checkpoint in OUT (other settings, or a step beyond --steps).
    """
    example: _Example = parser.example  # type: ignore[attr-defined]
    for action in parser._actions:  # the help of a flag whose default a preset sets says so
        if any(action.dest in preset for preset in presets.values()) and "preset" not in (action.help or ""):
            action.help = f"{action.help} (default: from the preset)"
    parser.epilog = f"{parser.epilog}\n\n{describe_presets(parser, presets)}".strip()
    args = parser.parse_args(argv)
    if args.quick and args.preset not in (None, "quick"):
        parser.error(f"--quick and --preset {args.preset} are two presets; pass one of them.")
    preset = "quick" if args.quick else args.preset or "default"
    given = {k: v for k, v in vars(args).items() if v is not None or k not in presets[preset]}
    cfg = SimpleNamespace(**{**presets[preset], **given, "preset": preset})
    if cfg.out is None:
        cfg.out = Path(example.out.format(**vars(cfg)))
    for folder in (cfg.out, *cfg.out.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "" if folder == cfg.out else f" (which {cfg.out} lies under)"
                parser.error(f"--out must name a folder, but {folder}{where} is a file; pass a folder's path.")
            break
    cfg.checkpoint_record = {
        "example": example.name, "settings": _jsonable({k: getattr(cfg, k) for k in example.model_settings})
    }
    if cfg.resume and (cfg.out / CHECKPOINT).is_file():
        _check_resume(parser, cfg, example)
    return cfg


def _jsonable(value: Any) -> Any:
    """value as it reads back from JSON (tuples as lists, paths as strings): what a recorded setting is compared to."""
    return json.loads(json.dumps(value, default=str))


def _check_resume(parser: argparse.ArgumentParser, cfg: SimpleNamespace, example: _Example) -> None:
    """parser.error unless OUT/checkpoint.pt was trained with this run's model settings, at a step <= --steps."""
    checkpoint, recorded_path = cfg.out / CHECKPOINT, cfg.out / CHECKPOINT_SETTINGS
    fix = "Pass them as they were to continue it, another --out for a new run, or leave out --resume to replace it."
    if not recorded_path.is_file():
        parser.error(
            f"--resume: {checkpoint} has no {CHECKPOINT_SETTINGS} beside it, the record of the settings it was trained "
            "with, so this run cannot tell whether it would continue the same model; pass another --out, or leave out "
            "--resume to replace the checkpoint."
        )
    try:
        recorded = json.loads(recorded_path.read_text())
        old = dict(recorded["settings"], example=recorded["example"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        parser.error(f"--resume: {recorded_path} is not a settings record of the examples ({type(err).__name__}: {err})")
    new = dict(cfg.checkpoint_record["settings"], example=example.name)
    flags = _flags(parser)
    differ = [
        f"{flags.get(k, k)} {_shown(old.get(k, 'unset'))} (this run: {_shown(new.get(k, 'unset'))})"
        + ("" if k in flags or k == "example" else ", set by the preset")
        for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    ]
    if differ:
        parser.error(f"--resume: {checkpoint} was trained with other settings: {'; '.join(differ)}. {fix}")
    try:
        step = sds.load_checkpoint(checkpoint, map_location="cpu").get("step")
    except ValueError as err:
        parser.error(f"--resume: {err}")
    if isinstance(step, int) and step > cfg.steps:
        parser.error(
            f"--resume: {checkpoint} is at step {step}, beyond --steps {cfg.steps} (the steps of the whole run); pass "
            f"--steps {step} or more to continue it ({step} to take it as it is), or another --out."
        )


def _write_json_atomically(path: Path, record: dict) -> None:
    """path holds either its previous content or the whole of record, whenever the process dies."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(record, indent=2, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    run = Run(info, device, out)
    run.log(
        f"preset {cfg.preset!r} on {device} ({info.world_size} process{'es' if info.world_size > 1 else ''}, "
        f"{torch.get_num_threads()} threads each); writing to {out}"
    )
    checkpoint = out / CHECKPOINT
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if info.is_main and not (cfg.resume and checkpoint.is_file()):  # a new run: its settings, then its checkpoints
        if checkpoint.is_file():  # a checkpoint of an earlier run must not be left beside this run's settings
            checkpoint.unlink()
            run.log(f"removed the earlier run's {checkpoint} (no --resume)")
        _write_json_atomically(out / CHECKPOINT_SETTINGS, cfg.checkpoint_record)
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
        checkpoint_path=run.out / CHECKPOINT,
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
        settings = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.cfg).items() if k != "checkpoint_record"
        }
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
        _write_json_atomically(self.run.out / "summary.json", record)
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
