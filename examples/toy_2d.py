"""Toy 2-D: learn the score of a Gaussian mixture by DSM, sample it three ways, check it all against exact answers.

What it shows, in the order of the code:
  1. a closed-form target from `validation` (8 Gaussians on a ring) and a forward SDE (VP by default);
  2. denoising score matching (sds.dsm_loss, Song et al. 2021, eq. 7) of an MLP (sds.ScoreMLP) that predicts the
     noise and is read as a score through sds.score_from_eps (Tweedie), trained by sds.train (Adam, warm-up,
     clipping, EMA, atomic checkpoints, resume, torchrun);
  3. three samplers with one signature (score, x_T, generator) -> SampleResult: the reverse-time SDE through
     torchsde (sde.reverse(score).sample), the predictor-corrector sampler (sds.pc_sample) and the probability-flow
     ODE through torchdiffeq (sde.probability_flow(score).sample), each run with the learned score and, as a
     control that isolates the sampler's own error, with the exact score of the mixture;
  4. the samples tested against the exact law at the samplers' end time (validation.sliced_ks_test, energy_test
     against exact draws, mode_weight_test);
  5. the log-likelihood of the trained model through the probability-flow ODE (sds.log_likelihood) against the
     analytic log-density of the same test points: the mean difference estimates KL(p || p_model) >= 0;
  6. plots: samples over the exact density, learned against exact score field, the loss curve.

Commands, from the repository root:
  python examples/toy_2d.py --quick                   # about a minute on 2 CPU cores
  python examples/toy_2d.py                           # the default preset: 20k steps, minutes on a CPU
  python examples/toy_2d.py --quick --sde ve          # the same with the VE-SDE (or --sde subvp)
  torchrun --standalone --nproc_per_node=2 examples/toy_2d.py --quick   # DDP over 2 processes, rank 0 evaluates
Writes to --out (default out/toy_2d_SDE, e.g. out/toy_2d_vp): samples.png, score_field.png, loss.png, summary.json,
checkpoint.pt and checkpoint_settings.json (what --resume checks).
"""

from __future__ import annotations

import math

import torch

import sdescore as sds
import validation
from sdescore.plotting import plot_loss_curve
from validation.plots import plot_samples, plot_score_field

import _common

NAME = "toy_2d"

PRESETS = {
    "quick": dict(
        steps=1500, batch_size=512, lr=2e-3, warmup_steps=100, grad_clip=1.0, ema_decay=0.995, checkpoint_every=1000,
        hidden=128, depth=3, n_train=20_000, n_samples=1500, sde_steps=500, n_test=1000,
        threads=1,  # a small MLP: one thread per process beats two that wait on each other
    ),
    "default": dict(
        steps=20_000, batch_size=512, lr=1e-3, warmup_steps=500, grad_clip=1.0, ema_decay=0.999, checkpoint_every=2000,
        hidden=256, depth=4, n_train=100_000, n_samples=4000, sde_steps=1000, n_test=2000,
    ),
}

# The forward SDEs by name. The ring has radius 4, so the VE-SDE's sigma_max = 10 exceeds the data's diameter
# (Song & Ermon 2020, technique 1) and its prior N(0, 100 I) covers the data.
SDES = {
    "vp": lambda: sds.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": lambda: sds.SubVPSDE(beta_min=0.1, beta_max=20.0),
    "ve": lambda: sds.VESDE(sigma_min=0.01, sigma_max=10.0),
}
EPS_SAMPLE = 1e-3  # the samplers stop at t = eps; their samples follow the exact law p_eps there
EPS_LIKELIHOOD = 1e-5  # log_likelihood returns log p_eps at this eps (its default)


def seeded(seed: int) -> torch.Generator:
    """A CPU generator: the statistical tests of `validation` draw on the CPU."""
    return torch.Generator().manual_seed(seed)


def main() -> int:
    # the model is defined by the SDE, the network and the training data (their seed, --seed, is recorded anyway)
    parser = _common.make_parser(
        __doc__, NAME, PRESETS, model_settings=("sde", "hidden", "depth", "n_train"), out="out/toy_2d_{sde}"
    )
    parser.add_argument("--sde", choices=sorted(SDES), default="vp", help="forward SDE (default vp)")
    parser.add_argument("--n-samples", type=_common.n_samples, help="samples drawn by each sampler")
    cfg = _common.parse(parser, PRESETS)
    run = _common.start(cfg)

    # ------------------------------------------------------------------ 1. the target and the forward SDE
    mixture = validation.ring()  # 8 equal Gaussians (std 0.5) on a circle of radius 4: every p_t in closed form
    sde = SDES[cfg.sde]()
    data = mixture.sample(cfg.n_train, torch.Generator().manual_seed(cfg.seed)).float()  # (n_train, 2)

    # ------------------------------------------------------------------ 2. denoising score matching
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = sds.ScoreMLP(2, hidden=cfg.hidden, depth=cfg.depth)

    def loss_fn(net, x0, generator):
        # The MLP predicts the noise; score = -eps_net / std(t) (sds.score_from_eps). DSM's default weighting
        # lambda = std^2 then makes the loss DDPM's ||eps_net - z||^2 / 2, of order one at every t.
        return sds.dsm_loss(sde, sds.score_from_eps(sde, net), x0, generator=generator)

    result = sds.train(model, loss_fn, data, **_common.train_options(cfg, run))
    if not run.is_main:  # under torchrun, rank 0 alone samples, evaluates and plots
        return 0
    summary = _common.Summary(NAME, cfg, run)
    summary.add_training(result.losses, "DSM loss (sigma2 weighting)")

    # ------------------------------------------------------------------ 3. sample with the learned and the exact score
    mixture = mixture.to(device=run.device)
    scores = {
        "learned": sds.score_from_eps(sde, result.ema),  # the EMA weights, already in eval mode
        "exact": mixture.score_fn(sde),  # the mixture's exact score of p_t, callable as score(x, t)
    }

    # One signature for the three samplers, (score, x_T, generator) -> SampleResult(x, nfe): one loop runs them all.
    def reverse_sde(score, x_T, g):  # Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6), by torchsde
        return sde.reverse(score).sample(x_T, steps=cfg.sde_steps, eps=EPS_SAMPLE, generator=g)

    def pc(score, x_T, g):  # reverse-diffusion predictor + one Langevin corrector step, snr 0.16 (algorithms 2-3)
        return sds.pc_sample(sde, score, None, x_T=x_T, steps=cfg.sde_steps, eps=EPS_SAMPLE, generator=g)

    def ode(score, x_T, g):  # the probability-flow ODE (eq. 13) by tsit5, rtol = atol = 1e-5; deterministic
        return sde.probability_flow(score).sample(x_T, eps=EPS_SAMPLE)

    samplers = {"reverse_sde": reverse_sde, "pc": pc, "ode": ode}
    target = mixture.marginal(sde, EPS_SAMPLE).to(device="cpu")  # the exact law the samplers aim at
    reference = target.sample(cfg.n_samples, seeded(cfg.seed + 1)).float()
    x_T = sde.prior_sampling((cfg.n_samples, 2), generator=run.generator(cfg.seed + 2), device=run.device)
    samples = {}
    for which, score in scores.items():
        for name, sample in samplers.items():
            with torch.no_grad():  # the same x_T and noise for both scores: the comparison is paired
                out = sample(score, x_T, run.generator(cfg.seed + 3))
            x = samples[which, name] = out.x.cpu()

            # ---------------------------------------------------------- 4. goodness-of-fit and two-sample tests
            ks = validation.sliced_ks_test(x, target, generator=seeded(cfg.seed + 4))
            energy = validation.energy_test(x, reference, n_permutations=200, generator=seeded(cfg.seed + 5))
            modes = validation.mode_weight_test(x, target, generator=seeded(cfg.seed + 6))
            key, who = f"{which}_{name}", f"{name} with the {which} score"
            summary.add(f"{key}_ks_p", ks.p_value, f"{who}: sliced KS p-value against the exact p_eps")
            summary.add(f"{key}_energy", energy.statistic, f"{who}: energy distance to exact draws (0 = same law)")
            summary.add(f"{key}_energy_p", energy.p_value, f"{who}: permutation p-value of that energy distance")
            summary.add(f"{key}_mode_err", modes.detail["max_abs_error"], f"{who}: largest error of the 8 mode weights")
            summary.add(f"{key}_nfe", out.nfe, f"{who}: score evaluations")
        run.log(f"sampled with the {which} score")

    # ------------------------------------------------------------------ 5. log-likelihood through the ODE vs analytic
    family = mixture.diffuse(sde)  # the exact laws p_t
    x_test = mixture.sample(cfg.n_test, torch.Generator(device=run.device).manual_seed(cfg.seed + 7)).float()
    analytic = family.log_prob(x_test, EPS_LIKELIHOOD)  # log p_eps(x), closed form
    # tsit5 with rtol = atol = 1e-5 and the exact trace (D = 2 vector-Jacobian products per step)
    model_ll = sds.log_likelihood(sde, scores["learned"], x_test, eps=EPS_LIKELIHOOD)
    exact_ll = sds.log_likelihood(sde, scores["exact"], x_test, eps=EPS_LIKELIHOOD)
    gap = (analytic - model_ll.logp).double()
    summary.add("loglik_analytic", analytic.mean(), "mean exact log p_eps of the test points (nats)")
    summary.add("loglik_model", model_ll.logp.mean(), "mean log-likelihood of the trained model by the ODE (nats)")
    summary.add("loglik_exact_score_ode", exact_ll.logp.mean(), "the same with the exact score: the solver's error")
    summary.add("kl_estimate", gap.mean(), "analytic - model mean: estimates KL(p || p_model) >= 0 (nats)")
    summary.add("kl_stderr", gap.std() / math.sqrt(cfg.n_test), "standard error of that estimate (nats)")
    summary.add("loglik_nfe", model_ll.nfe, "score evaluations of the model's likelihood ODE")

    # The learned score against the exact one: relative mean-square error under p_t at a few times.
    for t in (0.01, 0.1, 0.5):
        x_t = family.sample(4000, t, torch.Generator(device=run.device).manual_seed(cfg.seed + 8)).float()
        t_b = torch.full((x_t.shape[0],), t, device=run.device)
        with torch.no_grad():
            s, s_hat = scores["exact"](x_t, t_b), scores["learned"](x_t, t_b)
        rel = (s_hat - s).pow(2).sum(1).mean() / s.pow(2).sum(1).mean()
        summary.add(f"score_rel_mse_t{t:g}", rel, f"E|s_model - s|^2 / E|s|^2 under p_t at t = {t:g}")
    run.log("likelihoods and score errors done")

    # ------------------------------------------------------------------ 6. plots
    plot_samples(
        run.out / "samples.png", target,
        {"exact draws": reference, **{f"{name} (learned)": samples["learned", name] for name in samplers}},
        title=f"{cfg.sde.upper()}-SDE samples (grey) over the exact density (blue)",
    )

    def learned_on_cpu(x, t):
        with torch.no_grad():
            return scores["learned"](x.float().to(run.device), t.float().to(run.device)).double().cpu()

    plot_score_field(
        run.out / "score_field.png", validation.ring().diffuse(sde), [0.01, 0.1, 0.5], other=learned_on_cpu,
        other_label="learned", title="exact score (black) and learned score (red), arrows scaled by the exact norm",
    )
    plot_loss_curve(result.losses, run.out / "loss.png", title=f"DSM loss, {cfg.sde.upper()}-SDE")
    return summary.finish()


if __name__ == "__main__":
    _common.main_guard(main)
