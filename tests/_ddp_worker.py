"""Worker for the DDP test: `torchrun --standalone --nproc_per_node=2 tests/_ddp_worker.py OUT [CHECKPOINT N_STEPS [unshared]]`
trains the keyed problem below and rank 0 saves the final parameters and losses to OUT.

With CHECKPOINT it trains to N_STEPS with a checkpoint every 2 steps, resuming from CHECKPOINT when it exists,
and each rank that calls save_checkpoint appends the step to OUT.rank<r>.saves: the test reads who wrote. A fifth
argument `unshared` hides the checkpoint from rank 1 (another path), as storage not shared between nodes would."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sdescore.training.trainer as trainer  # noqa: E402
from sdescore.nets import ScoreMLP  # noqa: E402
from sdescore.training import setup_distributed, teardown_distributed, train  # noqa: E402

N_EXAMPLES, BATCH, N_STEPS, SEED = 40, 8, 8, 3


def make_data() -> torch.Tensor:
    """(N, 3): a 2-D point and, in the last column, the example's index (the key of its noise)."""
    x = torch.randn(N_EXAMPLES, 2, generator=torch.Generator().manual_seed(5))
    return torch.cat([x, torch.arange(N_EXAMPLES, dtype=x.dtype)[:, None]], dim=1)


def make_model() -> ScoreMLP:
    torch.manual_seed(0)
    return ScoreMLP(2, hidden=32, depth=2, embedding_dim=16)


def keyed_loss(model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DSM whose noise (z, sigma) is a function of the example index alone, so any split of a batch gives the same terms."""
    idx = x0[:, 2].long()
    x = x0[:, :2]
    z = torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(1000 + int(i))) for i in idx])
    sigma = 0.1 + (idx % 7).to(x.dtype) / 7
    s = model(x + sigma[:, None] * z, sigma)
    return ((sigma[:, None] * s + z) ** 2).sum(dim=1).mean()


def run(n_steps: int = N_STEPS, checkpoint: str | None = None):
    return train(
        make_model(), keyed_loss, make_data(), batch_size=BATCH, n_steps=n_steps, lr=1e-2,
        warmup_steps=2, grad_clip=0.5, ema_decay=0.5, seed=SEED, progress=False,
        checkpoint_path=checkpoint, checkpoint_every=2,
    )


if __name__ == "__main__":
    out = sys.argv[1]
    checkpoint, n_steps = (sys.argv[2], int(sys.argv[3])) if len(sys.argv) > 2 else (None, N_STEPS)
    info = setup_distributed()
    if sys.argv[4:] == ["unshared"]:  # rank 1 does not see the checkpoint, as on a node without the shared disk
        checkpoint = checkpoint if info.rank == 0 else f"{checkpoint}.not-on-this-node"
    real_save = trainer.save_checkpoint

    def recording_save(state, path):
        with open(f"{out}.rank{info.rank}.saves", "a") as log:
            log.write(f"{state['step']}\n")
        return real_save(state, path)

    trainer.save_checkpoint = recording_save
    result = run(n_steps, checkpoint)
    if info.is_main:
        torch.save(
            {"world_size": info.world_size, "model": result.model.state_dict(), "ema": result.ema.state_dict(),
             "losses": result.losses},
            out,
        )
    teardown_distributed()
