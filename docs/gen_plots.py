"""Draw the figures of the theory pages from the library itself, into docs/img/*.png.

    python docs/gen_plots.py                  # every figure, about 40 s on one CPU core
    python docs/gen_plots.py paths parzen     # only these (the function names below)

Every curve that stands for a closed form comes from `validation` (the exact mixture laws, scores, denoisers and
densities); every path and every sample comes from `sdescore` (the SDE's kernel, `langevin`,
`annealed_langevin`, the torchsde reverse SDE, the torchdiffeq probability-flow ODE, the converters). So a figure
shows what the code does, and a change in the library that changes a figure shows in the diff of docs/img.
Seeds are fixed; matplotlib draws on the Agg canvas, without pyplot's global state or a display.

Before drawing, the script asserts the identities the figures illustrate (a trajectory recorded step by step is
the library's sampler, the converters agree with the closed forms), so a figure cannot silently show something
else than its caption says.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torchdiffeq
import torchsde

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sdescore as sds  # noqa: E402
from validation import GaussianMixture, ncsn_toy, ring  # noqa: E402

OUT = ROOT / "docs" / "img"
f64 = torch.float64
DPI = 110
BLUE, ORANGE, GREEN, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#555555"


def figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save(fig, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    # no Software/date metadata: the same library draws the same bytes, so an unchanged figure leaves no diff
    fig.savefig(OUT / name, metadata={"Software": None})
    print(f"  wrote docs/img/{name}")


def bimodal_1d() -> GaussianMixture:
    """The 1-D data law of the 1-D figures: 0.3 N(-2, 0.3^2) + 0.7 N(1.5, 0.5^2)."""
    return GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [0.09, 0.25])


def column(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, 1).to(f64)


def bin_means(x: torch.Tensor, y: torch.Tensor, edges: torch.Tensor, min_count: int = 30):
    """Centres and means of y over the bins of x that hold at least min_count points: the empirical E[y | x]."""
    idx = torch.bucketize(x, edges) - 1
    centres, means = [], []
    for b in range(edges.shape[0] - 1):
        m = idx == b
        if int(m.sum()) >= min_count:
            centres.append(float(x[m].mean()))
            means.append(float(y[m].mean()))
    return centres, means


# ------------------------------------------------------------------------------------------------ score field
def score_field() -> None:
    """log p_t and the score field of the ring under the VP-SDE (exact, from validation) at four times."""
    sde = sds.VPSDE(beta_min=0.1, beta_max=20.0)
    p = ring().diffuse(sde)
    times = (0.01, 0.1, 0.3, 1.0)
    lim, n = 6.0, 160
    u = torch.linspace(-lim, lim, n, dtype=f64)
    X, Y = torch.meshgrid(u, u, indexing="xy")
    pts = torch.stack([X.flatten(), Y.flatten()], 1)
    fig, axes = figure(13, 3.5, ncols=4)
    for ax, t in zip(axes[0], times):
        tt = torch.full((pts.shape[0],), t, dtype=f64)
        logp = p.log_prob(pts, tt).reshape(n, n)
        s = p.score(pts, tt)
        ax.contourf(X.numpy(), Y.numpy(), torch.exp(logp).numpy(), levels=24, cmap="Blues")
        speed = s.norm(dim=1).reshape(n, n)
        ax.streamplot(
            X.numpy(), Y.numpy(), s[:, 0].reshape(n, n).numpy(), s[:, 1].reshape(n, n).numpy(),
            color=torch.log1p(speed).numpy(), cmap="Oranges", density=0.9, linewidth=0.8, arrowsize=0.8,
        )
        alpha, std = sde.kernel(torch.tensor([t], dtype=f64))
        ax.set_title(f"t = {t:g}:  alpha = {float(alpha):.2f}, std = {float(std):.2f}", fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("VP-SDE, ring of 8 Gaussians: density p_t (blue) and score field grad log p_t (streamlines)", fontsize=10)
    save(fig, "score_field.png")


# ------------------------------------------------------------------------------------------------ Langevin
def langevin_figures() -> None:
    """Plain and annealed Langevin on Song & Ermon's toy: paths recorded step by step, and final histograms."""
    target = ncsn_toy()
    noised = target.noised()  # score(x, sigma) of p * N(0, sigma^2 I): NCSN's interface
    sigmas = sds.ncsn_sigmas(20.0, 1.0, 10)
    n_each, step_lr, plain_step, plain_steps = 100, 0.1, 0.1, 1000

    # Paths of a few chains, one library step at a time: the generator's stream continues from call to call,
    # so the recorded path is the path of one long call (asserted below).
    n_paths = 20
    gen = torch.Generator().manual_seed(1)
    x0 = 16.0 * torch.rand(n_paths, 2, generator=gen, dtype=f64) - 8.0
    state = gen.get_state()
    plain_path = [x0]
    x = x0
    for _ in range(plain_steps):
        x = sds.langevin(target.score, x, plain_step, 1, generator=gen).x
        plain_path.append(x)
    gen.set_state(state)
    assert torch.equal(x, sds.langevin(target.score, x0, plain_step, plain_steps, generator=gen).x)

    # Annealed Langevin is Langevin at each level sigma_i with step alpha_i = step_lr sigma_i^2 / sigma_L^2
    # (Song & Ermon 2019, algorithm 1); recorded level by level and checked against annealed_langevin itself.
    gen.set_state(state)
    annealed_path, level_ends = [x0], []
    x = x0
    sigma_L = float(sigmas[-1])
    for sigma_i in sigmas.tolist():
        level = torch.full((n_paths,), sigma_i, dtype=f64)
        alpha_i = step_lr * (sigma_i / sigma_L) ** 2
        for _ in range(n_each):
            x = sds.langevin(lambda y: noised(y, level), x, alpha_i, 1, generator=gen).x
            annealed_path.append(x)
        level_ends.append(x)
    gen.set_state(state)
    reference = sds.annealed_langevin(noised, sigmas, x0, n_steps_each=n_each, step_lr=step_lr, denoise=False, generator=gen).x
    assert torch.allclose(x, reference, rtol=0, atol=1e-12), "the recorded path is not annealed_langevin's"

    lim, n = 9.0, 150
    u = torch.linspace(-lim, lim, n, dtype=f64)
    X, Y = torch.meshgrid(u, u, indexing="xy")
    dens = torch.exp(target.log_prob(torch.stack([X.flatten(), Y.flatten()], 1))).reshape(n, n)
    fig, axes = figure(10, 4.6, ncols=2)
    colors = [f"C{k % 10}" for k in range(n_paths)]
    for ax in axes[0]:
        ax.contour(X.numpy(), Y.numpy(), dens.numpy(), levels=6, colors=GREY, linewidths=0.7)
        ax.set_xlim(-lim - 4, lim + 4)
        ax.set_ylim(-lim - 4, lim + 4)
        ax.set_aspect("equal")
    ax = axes[0][0]
    P = torch.stack(plain_path)  # (steps + 1, n_paths, 2)
    for k in range(n_paths):
        ax.plot(P[:, k, 0].numpy(), P[:, k, 1].numpy(), lw=0.5, alpha=0.8, color=colors[k])
    heavy = int((target.classify(plain_path[-1]) == 1).sum())
    ax.set_title(f"plain, {plain_steps} steps of a = {plain_step}: {heavy} of {n_paths} end in the heavy mode", fontsize=9)
    ax = axes[0][1]
    P = torch.stack(annealed_path)
    L = sigmas.shape[0]
    for i in range(L):  # level i drawn darker as sigma_i falls: the early levels wander over the whole plane
        seg = P[i * n_each : (i + 1) * n_each + 1]
        for k in range(n_paths):
            ax.plot(seg[:, k, 0].numpy(), seg[:, k, 1].numpy(), lw=0.3 + 0.5 * i / L, alpha=0.04 + 0.9 * (i / (L - 1)) ** 3,
                    color=colors[k])
    heavy = int((target.classify(annealed_path[-1]) == 1).sum())
    ax.set_title(f"annealed, sigma 20 -> 1 (darker: later): {heavy} of {n_paths} end in the heavy mode", fontsize=9)
    for ax, path in ((axes[0][0], plain_path), (axes[0][1], annealed_path)):
        ax.scatter(path[0][:, 0].numpy(), path[0][:, 1].numpy(), s=12, c="k", marker="x", label="start (uniform)", zorder=3)
        ax.scatter(path[-1][:, 0].numpy(), path[-1][:, 1].numpy(), s=14, c="red", label="end", zorder=3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"0.2 N((-5,-5), I) + 0.8 N((5,5), I), weight 0.8 in the heavy mode (5, 5): Langevin paths of {n_paths} chains",
                 fontsize=10)
    save(fig, "langevin_paths.png")

    # Histograms of many chains, projected on the diagonal, against the exact projected densities of the laws
    # each sampler targets: p itself for plain Langevin, p * N(0, sigma_L^2) for annealed Langevin without its
    # final denoising step (which returns posterior means E[x0 | x], not samples of p).
    n = 4000
    gen = torch.Generator().manual_seed(2)
    x0 = 16.0 * torch.rand(n, 2, generator=gen, dtype=f64) - 8.0
    plain = sds.langevin(target.score, x0, plain_step, plain_steps, generator=gen).x
    annealed = sds.annealed_langevin(noised, sigmas, x0, n_steps_each=n_each, step_lr=step_lr, denoise=False, generator=gen).x
    v = torch.tensor([1.0, 1.0], dtype=f64) / math.sqrt(2.0)
    grid = torch.linspace(-12, 12, 400, dtype=f64)
    fig, axes = figure(10, 3.4, ncols=2, sharey=True)
    for ax, samples, law, title, label in (
        (axes[0][0], plain, target, "plain Langevin", "exact p"),
        (axes[0][1], annealed, noised.marginal(sigma_L), "annealed Langevin", f"exact p * N(0, {sigma_L:g}^2 I)"),
    ):
        projected = GaussianMixture(law.weights, (law.means @ v)[:, None], torch.einsum("d,kde,e->k", v, law.covs, v))
        heavy = float((law.classify(samples) == 1).double().mean())
        ax.hist((samples @ v).numpy(), bins=80, range=(-12, 12), density=True, color=ORANGE, alpha=0.6, label=f"{n} samples")
        ax.plot(grid.numpy(), torch.exp(projected.log_prob(column(grid))).numpy(), color=BLUE, lw=1.5, label=label)
        ax.set_title(f"{title}: {heavy:.2f} of the samples in the heavy mode (exact 0.80)", fontsize=9)
        ax.set_xlabel("(x1 + x2) / sqrt 2")
        ax.legend(fontsize=8)
    save(fig, "langevin_histograms.png")


# ------------------------------------------------------------------------------------------------ score matching
def parzen() -> None:
    """The Parzen-window density and score of 10 samples against the exact smoothed law p * N(0, sigma^2)."""
    p = bimodal_1d()
    data = p.sample(10, torch.Generator().manual_seed(3))
    grid = torch.linspace(-4.5, 4.5, 600, dtype=f64)
    fig, axes = figure(11, 5.6, ncols=3, nrows=2, sharex=True)
    for j, sigma in enumerate((0.15, 0.4, 1.0)):
        # the Parzen window estimator is itself a Gaussian mixture: equal weights on the samples, variance sigma^2
        parzen_law = GaussianMixture(torch.full((10,), 0.1), data, torch.full((10,), sigma**2))
        exact = p.noised()
        s_grid = torch.full((grid.shape[0],), sigma, dtype=f64)
        top, bottom = axes[0][j], axes[1][j]
        top.plot(grid.numpy(), torch.exp(exact.log_prob(column(grid), s_grid)).numpy(), color=BLUE, label="p_sigma = p * N(0, sigma^2)")
        top.plot(grid.numpy(), torch.exp(parzen_law.log_prob(column(grid))).numpy(), color=ORANGE, label="Parzen q_sigma")
        top.plot(data[:, 0].numpy(), torch.zeros(10).numpy(), "k|", ms=12, label="the 10 samples")
        top.set_title(f"sigma = {sigma}", fontsize=10)
        bottom.plot(grid.numpy(), exact.score(column(grid), s_grid)[:, 0].numpy(), color=BLUE, label="score of p_sigma")
        bottom.plot(grid.numpy(), parzen_law.score(column(grid))[:, 0].numpy(), color=ORANGE,
                    label="score of q_sigma = DSM optimum on the samples")
        bottom.set_ylim(-12, 12)
        bottom.axhline(0, color=GREY, lw=0.5)
        bottom.set_xlabel("x")
    axes[0][0].set_ylabel("density")
    axes[1][0].set_ylabel("score")
    handles = axes[0][0].get_legend_handles_labels()[0] + axes[1][0].get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside lower center", ncols=5, fontsize=8)
    save(fig, "parzen.png")


def dsm_regression() -> None:
    """Vincent's equivalence and Tweedie's formula seen as regressions: E[target | x_t] is the score, E[x0 | x_t] the denoiser."""
    p = bimodal_1d()
    sde = sds.VPSDE(beta_min=0.1, beta_max=20.0)
    t_value = 0.15
    n = 40000
    gen = torch.Generator().manual_seed(4)
    x0 = p.sample(n, gen)
    t = torch.full((n,), t_value, dtype=f64)
    xt, z = sde.perturb(x0, t, generator=gen)
    alpha, std = (float(c) for c in sde.kernel(t[:1]))
    family = p.diffuse(sde)
    grid = column(torch.linspace(-3.2, 2.8, 400, dtype=f64))
    tg = torch.full((grid.shape[0],), t_value, dtype=f64)
    score, denoiser = family.score(grid, tg), family.denoiser(grid, tg)
    # the converters of sdescore turn the exact denoiser into the exact score, and back (Tweedie)
    assert torch.allclose(sds.score_from_denoiser(sde, family.denoiser)(grid, tg), score, rtol=1e-9, atol=1e-9)
    assert torch.allclose(sds.denoiser_from_score(sde, family.score)(grid, tg), denoiser, rtol=1e-9, atol=1e-9)
    target = -z / std  # the DSM target grad log p_t(x_t | x0)
    edges = torch.linspace(-3.2, 2.8, 49, dtype=f64)
    show = slice(0, 3000)
    fig, axes = figure(11, 4, ncols=2)
    ax = axes[0][0]
    ax.scatter(xt[show, 0].numpy(), target[show, 0].numpy(), s=2, alpha=0.25, color=GREY, label="(x_t, -z / std): DSM target")
    c, m = bin_means(xt[:, 0], target[:, 0], edges)
    ax.plot(c, m, "o", color=ORANGE, ms=4, label="bin means of the target")
    ax.plot(grid[:, 0].numpy(), score[:, 0].numpy(), color=BLUE, lw=1.5, label="exact score grad log p_t")
    ax.set_ylim(-12, 12)
    ax.set_xlabel("x_t")
    ax.set_title(f"E[-z / std | x_t] = score   (VP, t = {t_value}, alpha = {alpha:.2f}, std = {std:.2f})", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax = axes[0][1]
    ax.scatter(xt[show, 0].numpy(), x0[show, 0].numpy(), s=2, alpha=0.25, color=GREY, label="(x_t, x0) pairs")
    c, m = bin_means(xt[:, 0], x0[:, 0], edges)
    ax.plot(c, m, "o", color=ORANGE, ms=4, label="bin means of x0")
    ax.plot(grid[:, 0].numpy(), denoiser[:, 0].numpy(), color=BLUE, lw=1.5, label="E[x0 | x_t] = (x + std^2 score) / alpha")
    ax.set_xlabel("x_t")
    ax.set_title("Tweedie: the posterior mean from the score", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    save(fig, "dsm_tweedie.png")


# ------------------------------------------------------------------------------------------------ the SDE view
def kernels() -> None:
    """alpha(t), std(t) and the log-SNR of the three SDEs, from sde.kernel and sde.log_snr."""
    sdes = {
        "VE (sigma 0.01 -> 50)": sds.VESDE(sigma_min=0.01, sigma_max=50.0),
        "VP (beta 0.1 -> 20)": sds.VPSDE(beta_min=0.1, beta_max=20.0),
        "sub-VP (beta 0.1 -> 20)": sds.SubVPSDE(beta_min=0.1, beta_max=20.0),
    }
    t = torch.linspace(1e-3, 1.0, 500, dtype=f64)
    fig, axes = figure(12, 3.3, ncols=3)
    for (name, sde), color in zip(sdes.items(), (BLUE, ORANGE, GREEN)):
        alpha, std = sde.kernel(t)
        axes[0][0].plot(t.numpy(), alpha.numpy(), color=color, label=name)
        axes[0][1].semilogy(t.numpy(), std.numpy(), color=color, label=name)
        axes[0][2].plot(t.numpy(), sde.log_snr(t).numpy(), color=color, label=name)
    for ax, title in zip(axes[0], ("alpha(t): mean coefficient", "std(t): kernel standard deviation",
                                   "log-SNR  lambda(t) = log(alpha^2 / std^2)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("t")
    axes[0][0].legend(fontsize=8)
    save(fig, "kernels.png")


def forward_marginals() -> None:
    """Histograms of sde.perturb(x0, t) for 1-D data against the exact p_t, for VE and VP."""
    p = bimodal_1d()
    n = 20000
    gen = torch.Generator().manual_seed(5)
    x0 = p.sample(n, gen)
    sdes = {"VE": sds.VESDE(sigma_min=0.01, sigma_max=50.0), "VP": sds.VPSDE(beta_min=0.1, beta_max=20.0)}
    times = (0.0, 0.2, 0.4, 1.0)
    fig, axes = figure(13, 5, ncols=4, nrows=2)
    for r, (name, sde) in enumerate(sdes.items()):
        family = p.diffuse(sde)
        for c, t_value in enumerate(times):
            t = torch.full((n,), t_value, dtype=f64)
            xt, _ = sde.perturb(x0, t, generator=gen)
            _, std = sde.kernel(t[:1])
            half = 4.0 + 4.0 * float(std)
            grid = column(torch.linspace(-half, half, 500, dtype=f64))
            dens = torch.exp(family.log_prob(grid, t_value))
            ax = axes[r][c]
            ax.hist(xt[:, 0].numpy(), bins=90, range=(-half, half), density=True, color=ORANGE, alpha=0.6, label="sde.perturb samples")
            ax.plot(grid[:, 0].numpy(), dens.numpy(), color=BLUE, lw=1.3, label="exact p_t")
            ax.set_title(f"{name}, t = {t_value:g}", fontsize=9)
            ax.set_yticks([])
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Forward marginals: the data 0.3 N(-2, 0.3^2) + 0.7 N(1.5, 0.5^2) pushed through the kernel", fontsize=10)
    save(fig, "forward_marginals.png")


# ------------------------------------------------------------------------------------------------ reverse SDE, ODE
def paths() -> None:
    """Reverse-SDE (torchsde) and probability-flow (torchdiffeq) paths over the heat map of p_t, and final histograms."""
    p = bimodal_1d()
    sde = sds.VPSDE(beta_min=0.1, beta_max=20.0)
    family = p.diffuse(sde)
    eps = 1e-3
    T = sde.T
    t_grid = torch.linspace(eps, T, 240, dtype=f64)
    x_grid = torch.linspace(-3.5, 3.5, 300, dtype=f64)
    TT, XX = torch.meshgrid(t_grid, x_grid, indexing="xy")
    dens = torch.exp(family.log_prob(column(XX.flatten()), TT.flatten())).reshape(XX.shape)
    eval_grid = column(x_grid)
    exact_eps = torch.exp(family.log_prob(eval_grid, eps))

    n = 5000
    gen = torch.Generator().manual_seed(6)
    x_T = sde.prior_sampling((n, 1), generator=gen, dtype=f64)
    steps = 500

    # Reverse SDE: the ReverseSDE object is a torchsde SDE in solver time s = T - t, so sdeint returns the path.
    rsde = sde.reverse(family)
    s = torch.linspace(0.0, T - eps, steps + 1, dtype=f64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=T - eps, size=(n, 1), dtype=f64, entropy=7)
    sde_path = torchsde.sdeint(rsde, x_T, s, bm=bm, method="euler", dt=(T - eps) / steps)
    sde_times = T - s

    # Probability-flow ODE: torchdiffeq with a fixed-step method on the decreasing grid, never outside [eps, T].
    ode = sde.probability_flow(family)
    ode_times = torch.linspace(T, eps, 201, dtype=f64)
    ode_path = torchdiffeq.odeint(ode, x_T, ode_times, method="rk4")
    # the same end point as the library's own sampler on the same grid
    assert torch.allclose(ode_path[-1], ode.sample(x_T, method="rk4", steps=200, eps=eps).x, rtol=1e-10, atol=1e-10)

    for name, times, path, n_show, title in (
        ("reverse_paths.png", sde_times, sde_path, 16, "reverse-time SDE (sde.reverse(score), torchsde Euler-Maruyama, 500 steps)"),
        ("flow_paths.png", ode_times, ode_path, 30, "probability-flow ODE (sde.probability_flow(score), torchdiffeq rk4, 200 steps)"),
    ):
        fig, axes = figure(12, 4, ncols=2, width_ratios=[3, 1], sharey=True)
        ax = axes[0][0]
        ax.pcolormesh(TT.numpy(), XX.numpy(), dens.numpy(), cmap="Blues", shading="auto", vmax=float(dens[:, 5:].max()))
        for k in range(n_show):
            ax.plot(times.numpy(), path[:, k, 0].numpy(), color=ORANGE, lw=0.6, alpha=0.9)
        ax.set_xlim(T, 0)
        ax.set_ylim(-3.5, 3.5)
        ax.set_xlabel("t  (runs from T = 1 down to eps)")
        ax.set_ylabel("x")
        ax.set_title(f"{title}; heat map: p_t", fontsize=9)
        ax = axes[0][1]
        ax.hist(path[-1, :, 0].numpy(), bins=70, range=(-3.5, 3.5), density=True, orientation="horizontal",
                color=ORANGE, alpha=0.6, label=f"{n} samples at eps")
        ax.plot(exact_eps.numpy(), x_grid.numpy(), color=BLUE, lw=1.3, label="exact p_eps")
        ax.set_title("samples vs density", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        save(fig, name)


FIGURES = (score_field, langevin_figures, parzen, dsm_regression, kernels, forward_marginals, paths)


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    known = {f.__name__: f for f in FIGURES}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"unknown figures {unknown}; the figures are {sorted(known)}")
    for draw in [known[n] for n in names] if names else FIGURES:
        start = time.perf_counter()
        draw()
        print(f"{draw.__name__}: {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
