"""NCSN reproduced as a VE-SDE: NCSN's loss, annealed Langevin sampling, then the same network as a VE-SDE score.

What it shows, in the order of the code:
  1. images from sdescore.data (scikit-learn's 8x8 digits by default; MNIST, Fashion-MNIST or CIFAR-10 from their
     files with --dataset and --data-dir), in NCSN's data space [0, 1];
  2. NCSN's geometric noise levels sigma_1 > ... > sigma_L (sds.ncsn_sigmas) and its loss (sds.ncsn_loss; Song &
     Ermon 2019, eq. 5-6) on a noise-conditional U-Net s(x, sigma) (sds.NCSNUNet), trained by sds.train;
  3. annealed Langevin dynamics, Algorithm 1 of Song & Ermon (2019) (sds.annealed_langevin);
  4. the same network as the score of a VE-SDE (Song et al. 2021, section 3.4): sds.ve_sde_from_ncsn_sigmas gives
     VESDE(sigma_min=sigma_L, sigma_max=sigma_1) and sds.score_from_ncsn turns s(x, sigma) into
     score(x, t) = s(x, sigma(t)), which the predictor-corrector sampler (sds.pc_sample) and the probability-flow
     ODE (sde.probability_flow(score).sample) take as they take any score;
  5. figures: the test loss against that of the zero score, the energy distance of each sampler's images to test
     images against the same distance between real train and test images; sample grids
     (sdescore.plotting.save_image_grid), the loss curve, and samples.npz (uint8) for an external FID tool.

Commands, from the repository root:
  python examples/ncsn_ve.py --quick                                   # digits, about a minute on 2 CPU cores
  python examples/ncsn_ve.py                                           # digits, the default preset (CPU: hours)
  python examples/ncsn_ve.py --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist
  python examples/ncsn_ve.py --dataset mnist --data-dir DIR            # DIR holds the four IDX files
  python examples/ncsn_ve.py --preset cifar10-paper --data-dir DIR     # NCSN's CIFAR-10 settings: a GPU and days
  torchrun --standalone --nproc_per_node=4 examples/ncsn_ve.py --preset cifar10-paper --data-dir DIR
Writes to --out (default out/ncsn_ve): samples_*.png, data.png, loss.png, samples.npz, summary.json, checkpoint.pt and
checkpoint_settings.json (what --resume checks).
"""

from __future__ import annotations


import numpy as np
import torch

import sdescore as sds
import validation
from sdescore.plotting import plot_loss_curve, save_image_grid

import _common

NAME = "ncsn_ve"

PRESETS = {
    "quick": dict(
        dataset="digits", sigma_1=1.0, sigma_L=0.01, n_levels=10,
        model=dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1),
        steps=300, batch_size=64, lr=1e-3, warmup_steps=0, grad_clip=1.0, ema_decay=0.98, checkpoint_every=1000,
        n_samples=64, sample_batch=64, n_steps_each=10, step_lr=4e-5, denoise=True, pc_steps=100, ode_tol=1e-3,
        threads=1,  # small convolutions: one thread per process beats two that wait on each other
    ),
    "default": dict(
        dataset="digits", sigma_1=1.0, sigma_L=0.01, n_levels=10,
        model=dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2),
        steps=20_000, batch_size=128, lr=1e-3, warmup_steps=500, grad_clip=1.0, ema_decay=0.999, checkpoint_every=1000,
        n_samples=256, sample_batch=256, n_steps_each=100, step_lr=4e-5, denoise=True, pc_steps=1000, ode_tol=1e-5,
    ),
    # Song & Ermon (2019), CIFAR-10: L = 10 levels from 1 to 0.01 on [0, 1] data, Adam lr 1e-3, batch 128, 200k
    # iterations, no EMA, T = 100 Langevin steps per level at step_lr 2e-5 in the reference code's convention
    # x + a s + sqrt(2 a) z, which is epsilon = 4e-5 in Algorithm 1's x + (alpha / 2) s + sqrt(alpha) z used by
    # sds.annealed_langevin; no final denoising step (NCSNv2 added it). The network is a DDPM-size NCSNUNet, not
    # NCSN's RefineNet: expect figures near, not equal to, the paper's (IS 8.87, FID 25.32 from 50k samples).
    "cifar10-paper": dict(
        dataset="cifar10", sigma_1=1.0, sigma_L=0.01, n_levels=10,
        model=dict(
            base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,), num_groups=32
        ),
        steps=200_000, batch_size=128, lr=1e-3, warmup_steps=0, grad_clip=None, ema_decay=0.0, checkpoint_every=5000,
        n_samples=50_000, sample_batch=1000, n_steps_each=100, step_lr=4e-5, denoise=False, pc_steps=1000, ode_tol=1e-5,
    ),
}


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels u in 0..255 to x = u / 255 in [0, 1], NCSN's data space (sigma_1 = 1 is on that scale)."""
    return images.float() / 255.0


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """x in [0, 1] back to uint8 pixels for viewing (clamped)."""
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def main() -> int:
    # the model is defined by the data, the noise levels of the loss and the network
    parser = _common.make_parser(
        __doc__, NAME, PRESETS, model_settings=("dataset", "sigma_1", "sigma_L", "n_levels", "model")
    )
    _common.add_image_arguments(parser)
    parser.add_argument("--n-steps-each", type=_common.int_at_least(1), help="Langevin steps per noise level")
    parser.add_argument(
        "--step-lr", type=_common.positive_float, help="epsilon of Algorithm 1 (twice the reference code's step_lr)"
    )
    cfg = _common.parse(parser, PRESETS)
    run = _common.start(cfg)

    # ------------------------------------------------------------------ 1. data in [0, 1]
    train_set, test_set = _common.load_images(cfg.dataset, cfg.data_dir)
    data = to_unit(train_set.images)  # (N, C, H, W)
    shape = tuple(data.shape[1:])
    run.log(f"{cfg.dataset}: {data.shape[0]} train and {test_set.images.shape[0]} test images of shape {shape}")

    # ------------------------------------------------------------------ 2. NCSN: levels, network, loss
    sigmas = sds.ncsn_sigmas(cfg.sigma_1, cfg.sigma_L, cfg.n_levels)  # sigma_1 > ... > sigma_L, geometric
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = sds.NCSNUNet(shape[0], **cfg.model)  # s(x, sigma) = F(x, log sigma) / sigma (NCSNv2's scaling)

    def loss_fn(net, x0, generator):
        # sigma_i^2 ||s(x0 + sigma_i z, sigma_i) + z / sigma_i||^2 / 2 with i uniform over the L levels
        return sds.ncsn_loss(net, x0, sigmas, generator=generator)

    result = sds.train(model, loss_fn, data, **_common.train_options(cfg, run))
    if not run.is_main:  # under torchrun, rank 0 alone samples, evaluates and plots
        return 0
    summary = _common.Summary(NAME, cfg, run)
    ema = result.ema  # the EMA weights, in eval mode: the model to sample with
    summary.add_training(result.losses, "NCSN loss (eq. 6)")
    x_test = to_unit(test_set.images[:1000]).to(run.device)
    with torch.no_grad():
        test_loss = sds.ncsn_loss(ema, x_test, sigmas, generator=run.generator(cfg.seed + 1))
    dim = x_test[0].numel()
    summary.add("test_loss", test_loss, "NCSN loss of the EMA model on test images")
    zero = dim / 2  # the loss of the zero score, E|z|^2 / 2
    summary.add("test_loss_vs_zero_score", test_loss / zero, "test loss / that of the zero score (1: nothing learned)")

    # ------------------------------------------------------------------ 3. annealed Langevin dynamics
    def annealed(n, i):
        g = run.generator(cfg.seed + 100 + i)
        x0 = torch.rand((n, *shape), generator=g, device=run.device)  # uniform noise on [0, 1], as in the paper
        return sds.annealed_langevin(ema, sigmas, x0, cfg.n_steps_each, cfg.step_lr, denoise=cfg.denoise, generator=g)

    # ------------------------------------------------------------------ 4. the same network as a VE-SDE score
    sde = sds.ve_sde_from_ncsn_sigmas(sigmas)  # VESDE(sigma_min=sigma_L, sigma_max=sigma_1, N=L - 1)
    score = sds.score_from_ncsn(sde, ema)  # score(x, t) = s(x, sigma(t)): exact for a VE kernel

    def pc(n, i):  # reverse-diffusion predictor + Langevin corrector, snr 0.16 (Song et al. 2021, VE setting)
        g = run.generator(cfg.seed + 200 + i)
        return sds.pc_sample(sde, score, (n, *shape), steps=cfg.pc_steps, snr=0.16, generator=g, device=run.device)

    def ode(n, i):  # probability-flow ODE by tsit5 from the VE prior N(0, sigma_1^2 I)
        x_T = sde.prior_sampling((n, *shape), generator=run.generator(cfg.seed + 300 + i), device=run.device)
        return sde.probability_flow(score).sample(x_T, rtol=cfg.ode_tol, atol=cfg.ode_tol)

    # ------------------------------------------------------------------ 5. figures and grids
    n_ref = min(cfg.n_samples, 2000, test_set.images.shape[0], train_set.images.shape[0])  # distances cost n_ref^2
    test_ref = to_unit(test_set.images[:n_ref]).flatten(1)
    floor = validation.energy_distance(to_unit(train_set.images[-n_ref:]).flatten(1), test_ref)
    summary.add("energy_train_vs_test", floor, f"energy distance of {n_ref} train to {n_ref} test images: the floor")
    save_image_grid(test_set.images[:64], run.out / "data.png")
    arrays = {}
    for name, sample in (("annealed_langevin", annealed), ("pc", pc), ("ode", ode)):
        with torch.no_grad():
            out = _common.sample_in_batches(sample, cfg.n_samples, cfg.sample_batch)
        x = out.x.clamp(0.0, 1.0)  # pixels live in [0, 1]; NCSN's reference code clamps the same way
        energy = validation.energy_distance(x[:n_ref].flatten(1), test_ref)
        summary.add(f"{name}_energy", energy, f"{name}: energy distance of its images to the test images")
        summary.add(f"{name}_mean_pixel", x.mean(), f"{name}: mean pixel in [0, 1] (test {float(test_ref.mean()):.3f})")
        summary.add(f"{name}_nfe", out.nfe, f"{name}: score evaluations per image batch")
        save_image_grid(to_pixels(x[:64]), run.out / f"samples_{name}.png")
        arrays[name] = to_pixels(x).numpy()
        run.log(f"sampled {cfg.n_samples} images by {name} ({out.nfe} score evaluations per batch)")
    np.savez_compressed(run.out / "samples.npz", **arrays)
    plot_loss_curve(result.losses, run.out / "loss.png", title=f"NCSN loss, {cfg.dataset}")
    return summary.finish()


if __name__ == "__main__":
    _common.main_guard(main)
