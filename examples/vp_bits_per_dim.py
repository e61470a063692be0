"""A VP (DDPM-style) model: epsilon loss, DDPM's ancestral sampling and ODE sampling, test bits/dim through the ODE.

What it shows, in the order of the code:
  1. images from sdescore.data (scikit-learn's 8x8 digits by default; MNIST, Fashion-MNIST or CIFAR-10 from their
     files with --dataset and --data-dir) as integer levels k and their model-space values x = 2 k / (L - 1) - 1
     in [-1, 1]: the digits are counts 0..16 (L = 17 levels), the other sets 8-bit pixels (L = 256, where the map
     is sdescore.data.images_to_float);
  2. the VP-SDE (sds.VPSDE, beta from 0.1 to 20) and DDPM's noise-prediction loss (sds.eps_loss; Ho et al. 2020,
     eq. 14; Song et al. 2021, eq. 7 with lambda = std^2) on a U-Net eps(x, t) (sds.DDPMUNet), trained by sds.train;
  3. ancestral sampling, Algorithm 2 of Ho et al. (2020) (sds.ddpm_sample), with the continuous-time network
     evaluated at the chain's times (sds.ddpm_eps_from_continuous);
  4. the probability-flow ODE (sde.probability_flow(score).sample) with score = -eps / std (sds.score_from_eps);
  5. test-set bits/dim through the probability-flow ODE (sds.dataset_bits_per_dim): uniform dequantization of the
     L integer levels, n_bins = L and data_range = (-1, 1 + 2 / (L - 1)), the model-space images of the bin edges
     0 and L (bin k starts at the training value x_k); Hutchinson's trace estimator;
  6. figures with their reference points (the uniform model's log2(L) bits/dim, the loss of the zero network),
     sample grids (sdescore.plotting.save_image_grid), the loss curve and samples.npz (uint8).

Commands, from the repository root:
  python examples/vp_bits_per_dim.py --quick                           # digits, about a minute on 2 CPU cores
  python examples/vp_bits_per_dim.py                                   # digits, the default preset (CPU: hours)
  python examples/vp_bits_per_dim.py --dataset mnist --data-dir DIR    # DIR holds the four IDX files
  python examples/vp_bits_per_dim.py --preset cifar10-paper --data-dir DIR   # score SDE's VP settings: GPUs, days
  torchrun --standalone --nproc_per_node=8 examples/vp_bits_per_dim.py --preset cifar10-paper --data-dir DIR
Writes to --out (default out/vp_bits_per_dim): samples_*.png, data.png, loss.png, samples.npz, summary.json,
checkpoint.pt and checkpoint_settings.json (what --resume checks).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import sdescore as sds
import validation
from sdescore.data import float_to_images
from sdescore.plotting import plot_loss_curve, save_image_grid

import _common

NAME = "vp_bits_per_dim"

PRESETS = {
    "quick": dict(
        dataset="digits",
        model=dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), dropout=0.0),
        steps=300, batch_size=64, lr=2e-3, warmup_steps=0, grad_clip=1.0, ema_decay=0.98, checkpoint_every=1000,
        n_samples=64, sample_batch=64, ddpm_steps=100, ode_tol=1e-3, n_bpd=64, bpd_batch=64, bpd_tol=1e-4,
        threads=1,  # small convolutions: one thread per process beats two that wait on each other
    ),
    "default": dict(
        dataset="digits",
        model=dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2, attention_levels=(1,), dropout=0.1),
        steps=20_000, batch_size=128, lr=2e-4, warmup_steps=1000, grad_clip=1.0, ema_decay=0.999, checkpoint_every=1000,
        n_samples=256, sample_batch=256, ddpm_steps=1000, ode_tol=1e-5, n_bpd=10_000, bpd_batch=100, bpd_tol=1e-5,
    ),
    # Song et al. (2021), VP-SDE on CIFAR-10 with DDPM's network (Ho et al. 2020, 35.7M parameters): Adam lr 2e-4,
    # batch 128, 1.3M iterations, warm-up 5000, gradient clipping 1, EMA 0.9999, dropout 0.1. Test bits/dim through
    # the ODE with rtol = atol = 1e-5 and eps = 1e-5 on the 10000 test images: about 3.2 (Table 2: "DDPM cont. (VP)").
    "cifar10-paper": dict(
        dataset="cifar10",
        model=dict(
            base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,), dropout=0.1,
            num_groups=32,
        ),
        steps=1_300_000, batch_size=128, lr=2e-4, warmup_steps=5000, grad_clip=1.0, ema_decay=0.9999,
        checkpoint_every=10_000,
        n_samples=50_000, sample_batch=1000, ddpm_steps=1000, ode_tol=1e-5, n_bpd=10_000, bpd_batch=500, bpd_tol=1e-5,
    ),
}

# sklearn's digits are counts 0..16: 17 levels (sdescore.data.load_digits stores k as u = floor(255 k / 16 + 1/2)).
LEVELS = {"digits": 17}


def integer_levels(images: torch.Tensor, n_levels: int) -> torch.Tensor:
    """The integer levels k in 0..n_levels - 1 of uint8 pixels u = floor(255 k / (n_levels - 1) + 1/2), as int64."""
    k = torch.round(images.double() * (n_levels - 1) / 255).long()
    if not torch.equal(torch.floor(k.double() * 255 / (n_levels - 1) + 0.5), images.double()):
        raise ValueError(f"these pixels are not {n_levels} evenly spaced levels of 0..255; check LEVELS.")
    return k


def to_model(k: torch.Tensor, n_levels: int) -> torch.Tensor:
    """Integer levels k to the model's space x = 2 k / (n_levels - 1) - 1 in [-1, 1]; images_to_float for 256 levels."""
    return (2.0 * k / (n_levels - 1) - 1.0).float()


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model-space x in [-1, 1] (clamped) to [0, 1], the scale on which distances between images are reported."""
    return (x.clamp(-1.0, 1.0) + 1.0) / 2.0


def main() -> int:
    # the model is defined by the data and the network (the VP-SDE is fixed)
    parser = _common.make_parser(__doc__, NAME, PRESETS, model_settings=("dataset", "model"))
    _common.add_image_arguments(parser)
    parser.add_argument("--n-bpd", type=_common.int_at_least(1), help="test images whose bits/dim are computed")
    cfg = _common.parse(parser, PRESETS)
    run = _common.start(cfg)

    # ------------------------------------------------------------------ 1. integer levels and model-space data
    train_set, test_set = _common.load_images(cfg.dataset, cfg.data_dir)
    n_levels = LEVELS.get(cfg.dataset, 256)
    k_train, k_test = integer_levels(train_set.images, n_levels), integer_levels(test_set.images, n_levels)
    data = to_model(k_train, n_levels)  # (N, C, H, W) in [-1, 1]
    shape = tuple(data.shape[1:])
    run.log(f"{cfg.dataset}: {data.shape[0]} train, {k_test.shape[0]} test images of shape {shape}, {n_levels} levels")

    # ------------------------------------------------------------------ 2. VP-SDE, epsilon network, epsilon loss
    sde = sds.VPSDE(beta_min=0.1, beta_max=20.0)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = sds.DDPMUNet(shape[0], **cfg.model)  # eps(x_t, t): predicts the noise of x_t = alpha x0 + std z

    def loss_fn(net, x0, generator):
        # ||eps(alpha x0 + std z, t) - z||^2 / 2 with t ~ U(1e-5, 1): the sigma2-weighted DSM loss in eps form
        return sds.eps_loss(sde, net, x0, generator=generator)

    result = sds.train(model, loss_fn, data, **_common.train_options(cfg, run))
    if not run.is_main:  # under torchrun, rank 0 alone samples, evaluates and plots
        return 0
    summary = _common.Summary(NAME, cfg, run)
    ema = result.ema  # the EMA weights, in eval mode: the model to sample and evaluate
    summary.add_training(result.losses, "epsilon loss")
    x_test = to_model(k_test[:1000], n_levels).to(run.device)
    with torch.no_grad():
        test_loss = sds.eps_loss(sde, ema, x_test, generator=run.generator(cfg.seed + 1))
    dim = x_test[0].numel()
    summary.add("test_loss", test_loss, "epsilon loss of the EMA model on test images")
    zero = dim / 2  # the loss of eps = 0, E|z|^2 / 2
    summary.add("test_loss_vs_zero_net", test_loss / zero, "test loss / that of eps = 0 (1: nothing learned)")
    score = sds.score_from_eps(sde, ema)  # score(x, t) = -eps(x, t) / std(t)

    # ------------------------------------------------------------------ 3. DDPM's ancestral sampling
    betas = sds.ddpm_betas(beta_min=0.1, beta_max=20.0, N=cfg.ddpm_steps)  # beta_i = beta(t_i) / N
    eps_chain = sds.ddpm_eps_from_continuous(sde, ema, betas)  # eps(x, i) = eps(x, t_i)

    def ancestral(n, i):
        g = run.generator(cfg.seed + 100 + i)
        x_T = torch.randn((n, *shape), generator=g, device=run.device)
        return sds.ddpm_sample(eps_chain, betas, x_T, variance="beta", generator=g)

    # ------------------------------------------------------------------ 4. the probability-flow ODE
    def ode(n, i):
        x_T = sde.prior_sampling((n, *shape), generator=run.generator(cfg.seed + 200 + i), device=run.device)
        return sde.probability_flow(score).sample(x_T, rtol=cfg.ode_tol, atol=cfg.ode_tol)

    n_ref = min(cfg.n_samples, 2000, k_test.shape[0], k_train.shape[0])  # distances cost n_ref^2
    test_ref = to_unit(to_model(k_test[:n_ref], n_levels)).flatten(1)
    floor = validation.energy_distance(to_unit(to_model(k_train[-n_ref:], n_levels)).flatten(1), test_ref)
    summary.add("energy_train_vs_test", floor, f"energy distance of {n_ref} train to {n_ref} test images: the floor")
    save_image_grid(test_set.images[:64], run.out / "data.png")
    arrays = {}
    for name, sample in (("ddpm_ancestral", ancestral), ("ode", ode)):
        with torch.no_grad():
            out = _common.sample_in_batches(sample, cfg.n_samples, cfg.sample_batch)
        x = to_unit(out.x)
        energy = validation.energy_distance(x[:n_ref].flatten(1), test_ref)
        summary.add(f"{name}_energy", energy, f"{name}: energy distance of its images to the test images")
        summary.add(f"{name}_mean_pixel", x.mean(), f"{name}: mean pixel in [0, 1] (test {float(test_ref.mean()):.3f})")
        summary.add(f"{name}_nfe", out.nfe, f"{name}: network evaluations per image batch")
        save_image_grid(out.x[:64].clamp(-1.0, 1.0), run.out / f"samples_{name}.png")
        arrays[name] = float_to_images(out.x).numpy()
        run.log(f"sampled {cfg.n_samples} images by {name} ({out.nfe} network evaluations per batch)")
    np.savez_compressed(run.out / "samples.npz", **arrays)

    # ------------------------------------------------------------------ 5. test bits/dim through the ODE
    loader = DataLoader(TensorDataset(k_test[: cfg.n_bpd]), batch_size=cfg.bpd_batch)
    bpd = sds.dataset_bits_per_dim(
        sde, score, loader,
        n_bins=n_levels, data_range=(-1.0, 1.0 + 2.0 / (n_levels - 1)),  # bin k <-> [x_k, x_k + 2 / (L - 1))
        trace="hutchinson", rtol=cfg.bpd_tol, atol=cfg.bpd_tol, eps=1e-5,
        device=run.device, generator=run.generator(cfg.seed + 300), progress=not cfg.no_progress,
    )
    summary.add("test_bpd", bpd.bpd, f"test bits/dim through the ODE (dequantization bound) on {bpd.n} images")
    summary.add("test_bpd_stderr", bpd.stderr, "its standard error over the images")
    summary.add("uniform_bpd", math.log2(n_levels), f"bits/dim of the uniform model on {n_levels} levels: the baseline")
    summary.add("bpd_nfe", bpd.nfe, "score evaluations of the bits/dim ODE solves, all batches")
    if bpd.bpd > 2 * math.log2(n_levels):
        summary.fail(f"test bits/dim {bpd.bpd:.2f} is worse than twice the uniform model's {math.log2(n_levels):.2f}")
    run.log("bits/dim done")

    plot_loss_curve(result.losses, run.out / "loss.png", title=f"epsilon loss, VP-SDE, {cfg.dataset}")
    return summary.finish()


if __name__ == "__main__":
    _common.main_guard(main)
