"""The training loop: exact resume after a kill, DDP = one process on the combined batch, atomic checkpoints,
the EMA and the warm-up in closed form, the data order, and the input checks."""

from __future__ import annotations

import collections
import enum
import fractions
import os
import pickle
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sdescore.nets import ScoreMLP
from sdescore.training import batch_indices, ema_state_dict, load_checkpoint, save_checkpoint, train, warmup_factor
from sdescore.training.distributed import shard

sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker  # noqa: E402
import _training_problem as problem  # noqa: E402

TESTS = Path(__file__).parent
# The killed run must compute exactly as this process does: same thread count.
ENV = {**os.environ, "PYTHONPATH": str(TESTS.parent), "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ resume
def test_resume_after_sigkill_reproduces_uninterrupted_run_bitwise(tmp_path):
    n_steps = 14
    reference = problem.run(None, n_steps)

    ckpt = tmp_path / "ckpt.pt"
    killed = subprocess.run(
        [sys.executable, str(TESTS / "_training_problem.py"), "--checkpoint", str(ckpt), "--n-steps", str(n_steps),
         "--kill-at", "8"],
        env=ENV, capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -9, killed.stderr  # died by SIGKILL after step 8; the last checkpoint is step 6
    assert load_checkpoint(ckpt)["step"] == 6

    resumed = problem.run(str(ckpt), n_steps)
    assert resumed.losses == reference.losses  # exact floats, including the 6 steps from the checkpoint
    assert _state_equal(resumed.model.state_dict(), reference.model.state_dict())
    assert _state_equal(resumed.ema.state_dict(), reference.ema.state_dict())


@pytest.mark.parametrize("first, total", [(2, 6), (5, 9)], ids=["inside the warm-up", "after the warm-up"])
def test_resume_continues_the_uninterrupted_run_bitwise(tmp_path, first, total):
    """Stop at `first` (the warm-up lasts 4 steps; 5 also ends a finished run), resume to `total`: the same run."""
    ckpt = tmp_path / "ckpt.pt"
    lrs_ref: list[float] = []
    lrs: list[float] = []
    reference = problem.run(None, total, callback=lambda info: lrs_ref.append(info.lr))
    problem.run(str(ckpt), first)
    resumed = problem.run(str(ckpt), total, callback=lambda info: lrs.append(info.lr))
    assert lrs == lrs_ref[first:]
    assert resumed.losses == reference.losses
    assert _state_equal(resumed.model.state_dict(), reference.model.state_dict())
    assert _state_equal(resumed.ema.state_dict(), reference.ema.state_dict())


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    problem.run(str(ckpt), 3)
    with pytest.raises(ValueError, match="batch_size"):
        train(problem.make_model(), problem.dsm_loss, problem.make_data(), batch_size=8, n_steps=4,
              seed=problem.SEED, checkpoint_path=ckpt, progress=False)


def test_resume_refuses_a_checkpoint_beyond_n_steps_and_takes_one_at_n_steps_as_it_is(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    done = problem.run(str(ckpt), 6)
    with pytest.raises(ValueError, match=r"ckpt\.pt is at step 6, beyond n_steps=4.*n_steps >= 6.*resume=False"):
        problem.run(str(ckpt), 4)
    assert load_checkpoint(ckpt)["step"] == 6  # the refusal left the checkpoint as it was
    same = problem.run(str(ckpt), 6)  # a finished run: no step taken, the checkpoint's model and history
    assert same.step == 6 and same.losses == done.losses
    assert _state_equal(same.model.state_dict(), done.model.state_dict())


def test_resume_trains_at_the_lr_betas_and_weight_decay_of_the_call(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    problem.run(str(ckpt), 3)  # lr 1e-2, warm-up 4, Adam's default betas, no weight decay
    lrs: list[float] = []
    kwargs = dict(batch_size=problem.BATCH, seed=problem.SEED, checkpoint_path=ckpt, progress=False)
    train(problem.make_model(), problem.dsm_loss, problem.make_data(), n_steps=6, lr=1e-3, warmup_steps=8,
          betas=(0.5, 0.9), weight_decay=0.1, callback=lambda info: lrs.append(info.lr), **kwargs)
    # steps 3, 4, 5 at the new lr on the new warm-up: 1e-3 * (4/8, 5/8, 6/8)
    assert lrs == pytest.approx([5e-4, 6.25e-4, 7.5e-4], rel=1e-12)
    state = load_checkpoint(ckpt)
    group = state["optimizer"]["param_groups"][0]
    assert (group["initial_lr"], tuple(group["betas"]), group["weight_decay"]) == (1e-3, (0.5, 0.9), 0.1)
    assert state["scheduler"]["base_lrs"] == [1e-3]
    # a further resume with the same arguments trains step 6 at that run's lr, 1e-3 * 7/8
    more: list[float] = []
    train(problem.make_model(), problem.dsm_loss, problem.make_data(), n_steps=7, lr=1e-3, warmup_steps=8,
          betas=(0.5, 0.9), weight_decay=0.1, callback=lambda info: more.append(info.lr), **kwargs)
    assert more == pytest.approx([8.75e-4], rel=1e-12)


# ------------------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_ddp_two_gloo_processes_equal_one_process_on_the_combined_batch(tmp_path):
    """Two legs under torchrun: 5 steps with checkpoints (rank 0 alone writes them), then a DDP resume to 8 steps;
    the result equals one process trained 8 steps on the combined batches."""
    ckpt = tmp_path / "ckpt.pt"

    def torchrun(out, n_steps):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(TESTS / "_ddp_worker.py"), str(out), str(ckpt), str(n_steps)],
            env=ENV, capture_output=True, text=True, timeout=180,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return torch.load(out, weights_only=True)

    first = torchrun(tmp_path / "first.pt", 5)
    assert (tmp_path / "first.pt.rank0.saves").read_text().split() == ["2", "4", "5"]
    assert not (tmp_path / "first.pt.rank1.saves").exists()  # rank 1 never called save_checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "first.pt", "first.pt.rank0.saves"]
    state = load_checkpoint(ckpt)
    assert (state["step"], state["world_size"]) == (5, 2)
    assert state["losses"].tolist() == first["losses"]

    ddp = torchrun(tmp_path / "resumed.pt", _ddp_worker.N_STEPS)
    assert ddp["world_size"] == 2
    assert (tmp_path / "resumed.pt.rank0.saves").read_text().split() == ["6", "8"]
    assert not (tmp_path / "resumed.pt.rank1.saves").exists()
    assert ddp["losses"][:5] == first["losses"]  # the history of the first leg, carried by the checkpoint

    single = _ddp_worker.run()
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(single.losses), rtol=1e-5, atol=1e-6)
    for name, p in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][name], p, rtol=1e-5, atol=1e-6, msg=name)
    for name, p in single.ema.state_dict().items():
        torch.testing.assert_close(ddp["ema"][name], p, rtol=1e-5, atol=1e-6, msg=f"ema {name}")


@pytest.mark.slow
def test_ddp_resume_refuses_ranks_that_see_different_checkpoints(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    _ddp_worker.run(2, str(ckpt))  # a checkpoint at step 2 that rank 0 finds and rank 1 does not
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(TESTS / "_ddp_worker.py"), str(tmp_path / "out.pt"), str(ckpt), "4", "unshared"],
        env=ENV, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode != 0
    assert "the ranks resume from different steps (0 to 2" in proc.stderr and "shared by all nodes" in proc.stderr
    assert load_checkpoint(ckpt)["step"] == 2  # nothing trained, nothing overwritten


def test_shards_of_a_global_batch_are_disjoint_and_cover_it():
    idx = torch.randperm(12)
    parts = [shard(idx, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == sorted(idx.tolist())
    with pytest.raises(ValueError, match="evenly"):
        shard(idx, 0, 5)


# ------------------------------------------------------------------------------------------ data order
def test_each_epoch_visits_every_example_once_in_a_new_order():
    n, b, seed = 50, 8, 3  # 6 batches per epoch, 2 examples dropped per epoch
    epochs = [torch.cat([batch_indices(e * 6 + k, n, b, seed) for k in range(6)]) for e in range(2)]
    for ep in epochs:
        assert ep.numel() == 48 and ep.unique().numel() == 48
    assert not torch.equal(epochs[0], epochs[1])
    assert torch.equal(batch_indices(7, n, b, seed), batch_indices(7, n, b, seed))


def test_dataset_and_tensor_data_give_the_same_run():
    data = problem.make_data()
    kwargs = dict(batch_size=16, n_steps=4, lr=1e-2, seed=1, progress=False)
    a = train(problem.make_model(), problem.dsm_loss, data, **kwargs)
    b = train(problem.make_model(), problem.dsm_loss, torch.utils.data.TensorDataset(data), **kwargs)
    assert a.losses == b.losses


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_of_train_loads_with_weights_only(tmp_path):
    ckpt = tmp_path / "c.pt"
    problem.run(str(ckpt), 3)
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3 and state["seed"] == problem.SEED
    assert set(state) >= {"model", "ema", "optimizer", "scheduler", "losses"}
    assert state["losses"].dtype == torch.float64 and state["losses"].shape == (3,)


def test_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    good = {"step": 1, "w": torch.arange(4.0)}
    save_checkpoint(good, path)

    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")  # a zip header and nothing else, then the "disk fills up"
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], good["w"])


def test_stray_partial_temporary_file_does_not_disturb_resume(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    problem.run(str(ckpt), 3)
    (tmp_path / ".ckpt.pt.abc123.tmp").write_bytes(b"PK\x03\x04 truncated by a kill")
    assert problem.run(str(ckpt), 4).losses == problem.run(None, 4).losses


class _Colour(enum.IntEnum):
    RED = 1


class _Name(str):
    pass


_Pair = collections.namedtuple("_Pair", "a b")

# Each of these torch.load(weights_only=True) refuses; the subclasses of allowed types once passed an isinstance check.
_REFUSED = {
    "lambda": lambda: 0,
    "numpy float64": np.float64(0.5),
    "numpy int64": np.int64(3),
    "IntEnum": _Colour.RED,
    "str subclass": _Name("x"),
    "namedtuple": _Pair(1, 2),
    "defaultdict": collections.defaultdict(int, a=1),
    "frozenset": frozenset({1}),
    "range": range(3),
}


@pytest.mark.parametrize("value", list(_REFUSED.values()), ids=list(_REFUSED))
def test_checkpoint_rejects_objects_weights_only_cannot_load(tmp_path, value):
    # the object itself can be pickled (except the lambda), but not loaded back with weights_only=True
    if not callable(value):
        torch.save({"x": value}, tmp_path / "plain.pt")
        with pytest.raises(pickle.UnpicklingError):
            torch.load(tmp_path / "plain.pt", weights_only=True)
        (tmp_path / "plain.pt").unlink()
    with pytest.raises(TypeError, match=r"state\['run'\]\[0\]\['x'\]"):
        save_checkpoint({"run": [{"x": value}]}, tmp_path / "c.pt")
    assert not any(tmp_path.iterdir())


def test_checkpoint_accepts_and_round_trips_what_weights_only_loads(tmp_path):
    state = {
        "w": torch.nn.Parameter(torch.arange(3.0)), "half": torch.ones(2, dtype=torch.bfloat16),
        "od": collections.OrderedDict(a=1), "size": torch.Size([2, 3]), "dtype": torch.float64,
        "device": torch.device("cpu"), "prims": [True, 1, 2.5, 1j, "s", b"b", None], "t": (1, (2,)),
    }
    loaded = load_checkpoint(save_checkpoint(state, tmp_path / "c.pt"))
    assert torch.equal(loaded["w"], state["w"]) and loaded["half"].dtype == torch.bfloat16
    assert {k: v for k, v in loaded.items() if k not in ("w", "half")} == {k: v for k, v in state.items() if k not in ("w", "half")}


def test_checkpoint_file_mode_follows_the_umask_like_any_new_file(tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint({"step": 1}, tmp_path / "c.pt")
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o640 == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_ema_state_dict_loads_the_ema_weights_into_a_fresh_network(tmp_path):
    ckpt = tmp_path / "c.pt"
    result = problem.run(str(ckpt), 3)
    fresh = problem.make_model()
    fresh.load_state_dict(ema_state_dict(ckpt))  # strict: every key of the bare network, no "n_averaged"
    assert _state_equal(fresh.state_dict(), result.ema.state_dict())
    assert not _state_equal(fresh.state_dict(), result.model.state_dict())  # the average, not the last weights
    with pytest.raises(ValueError, match="'ema'"):
        ema_state_dict({"model": {}})
    with pytest.raises(ValueError, match="an 'ema' entry without 'n_averaged'"):
        ema_state_dict({"ema": {"module.w": torch.zeros(1)}})


# ------------------------------------------------------------------------------------------ EMA, warm-up
def test_ema_equals_closed_form_exponential_average():
    decay, n_steps = 0.9, 4
    model = problem.make_model()
    seen: list[dict] = []

    def record(info):
        seen.append({k: v.detach().double().clone() for k, v in model.state_dict().items()})

    result = train(model, problem.dsm_loss, problem.make_data(), batch_size=16, n_steps=n_steps, lr=1e-2,
                   ema_decay=decay, progress=False, callback=record)
    # e_1 = p_1 and e_k = d e_{k-1} + (1 - d) p_k, so e_K = d^(K-1) p_1 + sum_{k=2}^K (1 - d) d^(K-k) p_k
    K = n_steps
    for name, e in result.ema.state_dict().items():
        closed = decay ** (K - 1) * seen[0][name] + sum((1 - decay) * decay ** (K - k) * seen[k - 1][name] for k in range(2, K + 1))
        torch.testing.assert_close(e.double(), closed, rtol=1e-6, atol=1e-7, msg=name)
        if name.endswith("weight"):
            assert not torch.allclose(e.double(), seen[-1][name])  # the average is not just the last weights


def test_warmup_schedule_is_linear_then_constant():
    lrs = []
    train(problem.make_model(), problem.dsm_loss, problem.make_data(), batch_size=16, n_steps=6, lr=0.1,
          warmup_steps=4, progress=False, callback=lambda info: lrs.append(info.lr))
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rel=1e-12)
    assert [warmup_factor(k, 0) for k in range(3)] == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(batch_size=1000), ValueError, "batch_size"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(n_steps=-1), ValueError, "n_steps"),
        (dict(lr=0.0), ValueError, "lr"),
        (dict(ema_decay=1.0), ValueError, "ema_decay"),
        (dict(grad_clip=-1.0), ValueError, "grad_clip"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(device="gpu0"), ValueError, "device"),
        (dict(batch_size=2.5), TypeError, "batch_size"),
    ],
)
def test_train_rejects_bad_arguments_by_name(kwargs, error, match):
    args = dict(batch_size=16, n_steps=2, progress=False) | kwargs
    with pytest.raises(error, match=match):
        train(problem.make_model(), problem.dsm_loss, problem.make_data(), **args)


def test_train_rejects_a_loss_that_is_not_a_scalar():
    def per_example(model, x0, generator):
        return (model(x0, torch.ones(x0.shape[0])) ** 2).sum(dim=1)

    with pytest.raises(ValueError, match="scalar"):
        train(problem.make_model(), per_example, problem.make_data(), batch_size=16, n_steps=1, progress=False)


def test_train_rejects_unknown_keyword():
    with pytest.raises(TypeError):
        train(problem.make_model(), problem.dsm_loss, problem.make_data(), batch_size=problem.BATCH, n_steps=1, epochs=3)


@pytest.mark.slow
def test_compiled_training_matches_eager_losses():
    def model():  # no dropout: inductor draws dropout masks from its own random stream
        torch.manual_seed(0)
        return ScoreMLP(2, hidden=32, depth=2, embedding_dim=16)

    kwargs = dict(batch_size=16, n_steps=3, lr=1e-2, seed=1, progress=False)
    eager = train(model(), problem.dsm_loss, problem.make_data(), **kwargs)
    compiled = train(model(), problem.dsm_loss, problem.make_data(), compile_model=True, **kwargs)
    torch.testing.assert_close(torch.tensor(compiled.losses), torch.tensor(eager.losses), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ torchrun environment
@pytest.fixture
def single_process(monkeypatch):
    """No torchrun variables; afterwards (even after a failure) the device setup_distributed chose is forgotten."""
    from sdescore.training import teardown_distributed

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    yield
    teardown_distributed()


def test_setup_without_torchrun_is_a_single_process(single_process):
    from sdescore.training import setup_distributed

    info = setup_distributed()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)


@pytest.mark.parametrize("env, match", [({"WORLD_SIZE": "two"}, "WORLD_SIZE"), ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2")])
def test_setup_rejects_a_malformed_torchrun_environment(single_process, monkeypatch, env, match):
    from sdescore.training import setup_distributed

    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=match):
        setup_distributed()


def test_setup_on_the_cpu_makes_train_default_to_the_cpu_even_when_cuda_is_available(single_process, monkeypatch):
    from sdescore.training import setup_distributed, teardown_distributed
    from sdescore.training.trainer import _resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    assert _resolve_device(None) == torch.device("cuda", 0)
    assert setup_distributed("cpu").device == torch.device("cpu")
    assert _resolve_device(None) == torch.device("cpu")  # train(device=None) trains where setup chose
    teardown_distributed()
    assert _resolve_device(None) == torch.device("cuda", 0)


def test_setup_on_the_cpu_chooses_the_cpu_and_rejects_an_unknown_device(single_process):
    from sdescore.training import setup_distributed

    assert setup_distributed("cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be None, 'cpu' or 'cuda'"):
        setup_distributed("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            setup_distributed("cuda")


# ------------------------------------------------------------------------------------------ damaged or foreign files
class _Payload:
    def __reduce__(self):
        return (os.system, ("echo payload ran > payload.txt",))


def _flip_bytes_in_tensor_record(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    # the local header's name and extra-field lengths (torch pads the extra field to align the data)
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), int.from_bytes(
        data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + 16
    data[start:start + 8] = bytes(255 - b for b in data[start:start + 8])
    dst.write_bytes(bytes(data))


def test_load_checkpoint_refuses_a_flipped_byte_that_torch_load_would_accept(tmp_path):
    good = save_checkpoint({"w": torch.arange(64.0)}, tmp_path / "good.pt")
    _flip_bytes_in_tensor_record(good, tmp_path / "bad.pt")
    loaded = torch.load(tmp_path / "bad.pt", weights_only=True)  # torch.load alone reads wrong weights silently
    assert not torch.equal(loaded["w"], torch.arange(64.0))
    with pytest.raises(ValueError, match=r"bad\.pt.*record 'archive/data/0'.*CRC-32"):
        load_checkpoint(tmp_path / "bad.pt")


def test_load_checkpoint_loads_the_version_it_checked_when_the_path_is_replaced_meanwhile(tmp_path, monkeypatch):
    path = save_checkpoint({"w": torch.zeros(4)}, tmp_path / "c.pt")
    real_testzip = zipfile.ZipFile.testzip

    def testzip_then_replace(archive):  # another process writes a new checkpoint while this one is being checked
        bad = real_testzip(archive)
        save_checkpoint({"w": torch.ones(4)}, path)
        return bad

    monkeypatch.setattr(zipfile.ZipFile, "testzip", testzip_then_replace)
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(4))  # the checked version, not a mix or the new one
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(4))


def test_resume_from_a_damaged_checkpoint_stops_before_training(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    problem.run(str(ckpt), 2)
    _flip_bytes_in_tensor_record(ckpt, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="CRC-32"):
        problem.run(str(ckpt), 4)
    assert ckpt.read_bytes() == before  # the damage was not saved over with a fresh CRC


@pytest.mark.parametrize("content", [b"", b"hello world", b"PK\x03\x04 truncated", b"\x80\x02}q\x00(X"],
                         ids=["empty", "text", "truncated zip", "truncated pickle"])
def test_load_checkpoint_names_an_unreadable_file(tmp_path, content):
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"c\.pt is not a readable checkpoint.*resume=False"):
        load_checkpoint(path)


def test_every_flipped_bit_of_a_checkpoint_loads_the_same_state_or_names_the_file(tmp_path):
    # torch.load and zipfile raise a dozen exception types on a damaged file (BadZipFile, NotImplementedError for a
    # damaged compression method, RuntimeError from torch's archive reader, UnicodeDecodeError, ...): every one must
    # come out as the ValueError naming the file, and none may load different weights.
    good = save_checkpoint({"step": 1, "w": torch.arange(16.0)}, tmp_path / "good.pt")
    data = good.read_bytes()
    bad, outcomes = tmp_path / "bad.pt", {"same": 0, "named": 0}
    for pos in range(0, len(data), 3):
        flipped = bytearray(data)
        flipped[pos] ^= 0x80 if pos % 2 else 0x01
        bad.write_bytes(bytes(flipped))
        try:
            state = load_checkpoint(bad)
        except ValueError as e:
            assert "bad.pt" in str(e), str(e)
            outcomes["named"] += 1
            continue
        assert state["step"] == 1 and torch.equal(state["w"], torch.arange(16.0)), f"byte {pos} loaded other weights"
        outcomes["same"] += 1
    assert outcomes["named"] > len(data) // 6  # most flips are detected (not a vacuous loop over padding)


def test_load_checkpoint_names_a_zip_that_is_not_a_torch_save_file(tmp_path):
    with zipfile.ZipFile(tmp_path / "c.pt", "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    with pytest.raises(ValueError, match=r"c\.pt is not a readable checkpoint.*resume=False"):
        load_checkpoint(tmp_path / "c.pt")


def test_load_checkpoint_names_an_object_outside_the_allowlist(tmp_path):
    torch.save({"ratio": fractions.Fraction(1, 3)}, tmp_path / "c.pt")  # harmless, but not weights-only loadable
    with pytest.raises(ValueError, match=r"c\.pt holds an object that torch\.load\(weights_only=True\) refuses "
                                         r"\(.*fractions\.Fraction"):
        load_checkpoint(tmp_path / "c.pt")


def test_a_device_error_of_an_intact_checkpoint_is_not_called_damage(tmp_path):
    path = save_checkpoint({"w": torch.ones(3)}, tmp_path / "c.pt")
    with pytest.raises(RuntimeError) as info:
        load_checkpoint(path, map_location="cpuu")  # a misspelt device: torch's own error, not "damaged"
    assert not isinstance(info.value, ValueError) and "not a readable checkpoint" not in str(info.value)


def test_load_checkpoint_refuses_a_pickled_payload_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt holds an object that torch\.load\(weights_only=True\) refuses \(.*GLOBAL posix\.system"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "payload.txt").exists()


@pytest.mark.parametrize("settings", [True, False], ids=["with the run's settings", "a bare state dict"])
def test_resume_refuses_a_dict_that_is_not_a_train_checkpoint(tmp_path, settings):
    ckpt = tmp_path / "ckpt.pt"
    run = {"seed": problem.SEED, "batch_size": problem.BATCH, "n_examples": problem.N_EXAMPLES} if settings else {}
    save_checkpoint({**run, "model": problem.make_model().state_dict()}, ckpt)
    state = dict(load_checkpoint(ckpt))
    lacking = ["ema", "losses", "optimizer", "step"] if settings else ["batch_size", "ema", "losses", "n_examples",
                                                                      "optimizer", "seed", "step"]
    with pytest.raises(ValueError, match=re.escape(f"lacks the entries {lacking}")):
        problem.run(str(ckpt), 2)
    assert load_checkpoint(ckpt).keys() == state.keys()


@pytest.mark.parametrize("where", ["directory", "under a file"])
def test_train_refuses_an_unwritable_checkpoint_path_before_the_first_step(tmp_path, where):
    path = tmp_path if where == "directory" else tmp_path / "file.pt" / "c.pt"
    (tmp_path / "file.pt").write_bytes(b"")
    steps = []
    with pytest.raises(ValueError, match="is a directory" if where == "directory" else "which is a file"):
        train(problem.make_model(), problem.dsm_loss, problem.make_data(), batch_size=problem.BATCH, n_steps=3,
              checkpoint_path=path, progress=False, callback=steps.append)
    assert steps == []


def test_train_under_torchrun_without_a_process_group_is_refused(monkeypatch):
    # torchrun sets WORLD_SIZE; without setup_distributed each process would train alone and race on one checkpoint
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2 .* call sdescore\.training\.setup_distributed\(\) before train"):
        train(problem.make_model(), problem.dsm_loss, problem.make_data(), batch_size=problem.BATCH, n_steps=1,
              device="cpu", progress=False)


@pytest.mark.parametrize("betas", [(1.5, 0.9), (0.9, 1.0)])
def test_train_refuses_adam_betas_outside_zero_one(betas):
    with pytest.raises(ValueError, match=r"betas must lie in \[0, 1\)"):
        train(problem.make_model(), problem.dsm_loss, problem.make_data(), batch_size=problem.BATCH, n_steps=1,
              betas=betas, progress=False)


def test_train_refuses_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        train(problem.make_model(), problem.dsm_loss, problem.make_data(), batch_size=problem.BATCH, n_steps=1,
              device="cuda", progress=False)
