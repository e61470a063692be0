"""The quick forms of `python -m validation` (so CI keeps every identity true), the statistics they rest on, and
the runner, table, CLI and check_sampler."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats as sps

import sdescore
from sdescore import VPSDE
from validation import checks as V
from validation.__main__ import main
from validation.mixtures import GaussianMixture, random_anisotropic, ring
from validation.stats import energy_distance, energy_test, log_density_ks_test, mode_weight_test, sliced_ks_test

f64 = torch.float64
QUICK = [name for name, c in V.CHECKS.items() if c.quick]


# ---------------------------------------------------------------------- every quick check passes
@pytest.fixture
def one_thread():
    """The checks run on small tensors, where intra-op threads cost more than they give (as in the CLI)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", QUICK)
def test_quick_check_passes(name, one_thread):
    rows = V.run_checks([name], quick=True)
    assert rows, f"check {name} recorded no rows"
    skipped = [r for r in rows if r.status == "skip"]
    assert not skipped, "a quick check was skipped (every part of sdescore it needs must exist):\n" + V.format_table(skipped)
    failed = [r for r in rows if r.status == "FAIL"]
    assert not failed, "\n" + V.format_table(failed)


def test_the_chain_check_fails_a_score_off_by_three_percent(monkeypatch, one_thread):
    """sampler_chains compares with each method's exact variance recursion; the law tests of pc_sampler pass a
    score scaled by 0.9. A score scaled by 0.97 must fail it on every SDE (the expected |z| is 6 to 18)."""
    exact = V._isotropic_score
    monkeypatch.setattr(V, "_isotropic_score", lambda sde, c: (lambda f: lambda x, t: 0.97 * f(x, t))(exact(sde, c)))
    rows = V.run_checks(["sampler_chains"], quick=True)
    assert {r.sde for r in rows if r.status == "FAIL"} == {"VE", "VP", "subVP"}, V.format_table(rows)


def test_every_check_is_documented():
    for c in V.CHECKS.values():
        assert c.description and c.description != c.name, c.name


# ---------------------------------------------------------------------- the statistics: calibrated and powerful
RUNS = 300  # null runs per calibration test
CALIBRATION_LEVEL = 0.1


def assert_not_anti_conservative(ps):
    """At most binom.isf(1e-3, RUNS, 0.1) = 47 of RUNS = 300 null p-values below 0.1: a test of size <= 0.1 fails this
    with probability < 1e-3, while a test of size 0.2 (twice too liberal: mean 60 rejections) passes it with
    probability 0.033 (binomial tails)."""
    assert len(ps) == RUNS
    bound = sps.binom.isf(1e-3, RUNS, CALIBRATION_LEVEL)
    rejections = sum(p < CALIBRATION_LEVEL for p in ps)
    assert rejections <= bound, f"{rejections} of {RUNS} null p-values below {CALIBRATION_LEVEL} (at most {bound:g})"


def assert_exact(ps):
    """For a test whose p-value is exact (P(p <= 0.1) = 0.1 under the null, permutation p-values included when 0.1
    is on their lattice): between binom.ppf(5e-4, RUNS, 0.1) = 14 and binom.isf(5e-4, RUNS, 0.1) = 48 of RUNS = 300
    null p-values at or below 0.1. An exact test fails this with probability 7e-4; one that never rejects fails it,
    and one of size 0.025 at 0.1 (mean 7.5 rejections) with probability 0.98, which the one-sided bound above cannot
    see."""
    assert len(ps) == RUNS
    low, high = sps.binom.ppf(5e-4, RUNS, CALIBRATION_LEVEL), sps.binom.isf(5e-4, RUNS, CALIBRATION_LEVEL)
    rejections = sum(p <= CALIBRATION_LEVEL for p in ps)
    assert low <= rejections <= high, (
        f"{rejections} of {RUNS} null p-values at or below {CALIBRATION_LEVEL} (expected {low:g} to {high:g})"
    )


def test_calibration_bounds_catch_tests_too_liberal_or_too_conservative():
    """The bounds above have the power they claim: uniform p-values pass both; those of a size-0.2 test fail both;
    those of a valid but conservative test (p = u where u <= 0.025, else (1 + u) / 2: size 0.025 at 0.1) pass
    the one-sided bound and fail the exact one."""
    gen = torch.Generator().manual_seed(0)
    uniform = torch.rand(RUNS, generator=gen, dtype=f64)
    conservative = torch.where(uniform <= 0.025, uniform, 0.5 * (1.0 + uniform))
    assert_not_anti_conservative(uniform.tolist())
    assert_exact(uniform.tolist())
    assert_not_anti_conservative(conservative.tolist())
    for bound, ps in ((assert_not_anti_conservative, 0.5 * uniform), (assert_exact, 0.5 * uniform),
                      (assert_exact, conservative)):
        with pytest.raises(AssertionError):
            bound(ps.tolist())


def test_sliced_ks_is_not_anti_conservative_under_the_null_and_detects_a_shift():
    """Under the null (exact samples) the Bonferroni p-value is conservative; a 5% shift of the means is always detected."""
    m = random_anisotropic(3, 3, seed=1)
    gen = torch.Generator().manual_seed(0)
    assert_not_anti_conservative([sliced_ks_test(m.sample(200, gen), m, n_projections=4, generator=gen).p_value
                                  for _ in range(RUNS)])
    shifted = GaussianMixture(m.weights, 1.05 * m.means, m.covs)
    assert sliced_ks_test(shifted.sample(2000, gen), m, generator=gen).p_value < 1e-6


def test_energy_test_is_exact_under_the_null_and_detects_a_shift():
    """The permutation p-value is exact; a shift by 0.4 of the ring's radius gets the smallest p-value 199
    permutations can give."""
    m = ring()
    gen = torch.Generator().manual_seed(1)
    assert_exact([energy_test(m.sample(60, gen), m.sample(60, gen), n_permutations=49, generator=gen).p_value
                  for _ in range(RUNS)])
    shifted = m.sample(400, gen) + torch.tensor([1.6, 0.0], dtype=f64)
    assert energy_test(m.sample(400, gen), shifted, n_permutations=199, generator=gen).p_value == 1 / 200


def test_energy_test_can_reject_at_the_suites_level_and_refuses_levels_it_cannot_reach():
    """p >= 1 / (P + 1): with P = 1000 a scaled sample is rejected at LEVEL = 1e-3; with the default P = 500 the
    test could never reject there, so asking for that level is an error (not a silent pass)."""
    m = ring()
    gen = torch.Generator().manual_seed(4)
    x, y = 3 * m.sample(150, gen), m.sample(150, gen)
    res = energy_test(x, y, n_permutations=1000, level=V.LEVEL, generator=gen)
    assert res.p_value == 1 / 1001 and not res.passed(V.LEVEL)
    with pytest.raises(ValueError, match="n_permutations = 500"):
        energy_test(x, y, level=V.LEVEL)
    default = energy_test(x, y, generator=gen)
    assert default.min_p_value == 1 / 501
    with pytest.raises(ValueError, match="could never reject"):
        default.passed(V.LEVEL)
    assert not default.passed(0.01)


@pytest.mark.parametrize(
    "x, y, error, match",
    [
        (torch.zeros(5, dtype=f64), torch.zeros(5, 2, dtype=f64), ValueError, "x must have shape"),
        (torch.zeros(5, 2, dtype=f64), torch.zeros(0, 2, dtype=f64), ValueError, "y must have shape"),
        (torch.zeros(1, 2, dtype=f64), torch.zeros(5, 2, dtype=f64), ValueError, "n >= 2"),
        (torch.zeros(5, 2, dtype=f64), torch.zeros(5, 3, dtype=f64), ValueError, "dimension of x"),
        (torch.full((5, 2), float("nan"), dtype=torch.float64), torch.zeros(5, 2, dtype=f64), ValueError, "x holds non-finite"),
        ([[0.0, 1.0]] * 5, torch.zeros(5, 2, dtype=f64), TypeError, "x must be a torch.Tensor"),
        (torch.zeros(5, 2, dtype=torch.long), torch.zeros(5, 2, dtype=f64), TypeError, "floating"),
    ],
)
def test_energy_test_refuses_bad_samples_naming_them(x, y, error, match):
    with pytest.raises(error, match=match):
        energy_test(x, y, n_permutations=9)


def test_energy_distance_is_the_tests_statistic_and_does_not_move_with_a_shift():
    """energy_distance is the statistic energy_test reports; both are invariant under a common translation (they
    centre the pooled sample before torch.cdist, whose |a|^2 + |b|^2 - 2 a.b form loses far-off points), and the
    distance refuses what the test refuses."""
    m = ring()
    gen = torch.Generator().manual_seed(5)
    x, y = m.sample(300, gen), 1.1 * m.sample(200, gen)
    e = energy_distance(x, y)
    assert e == pytest.approx(energy_test(x, y, n_permutations=9, generator=gen).statistic, rel=1e-12)
    for shift in (1e4, 1e7):
        assert energy_distance(x + shift, y + shift) == pytest.approx(e, rel=1e-9)
        assert energy_test(x + shift, y + shift, n_permutations=9, generator=gen).statistic == pytest.approx(e, rel=1e-9)
    with pytest.raises(ValueError, match="y must have shape"):
        energy_distance(x, torch.zeros(0, 2, dtype=f64))
    with pytest.raises(ValueError, match="x holds non-finite"):
        energy_distance(torch.full((5, 2), float("nan"), dtype=f64), y)


def test_mode_weight_test_recovers_weights_and_detects_wrong_ones():
    m = random_anisotropic(2, 4, seed=3)
    gen = torch.Generator().manual_seed(2)
    assert_exact([mode_weight_test(m.sample(200, gen), m, n_reference=4000, generator=gen).p_value
                  for _ in range(RUNS)])
    res = mode_weight_test(m.sample(4000, gen), m, generator=gen)
    assert res.detail["max_abs_error"] < 0.05
    other = GaussianMixture(torch.tensor([0.4, 0.2, 0.2, 0.2]), m.means, m.covs)
    assert mode_weight_test(other.sample(4000, gen), m, generator=gen).p_value < 1e-6


@pytest.mark.slow
def test_mode_weight_test_keeps_its_level_with_a_small_reference_sample():
    """The covariance S of the responsibilities is estimated from n_reference = 100 draws: the statistic is
    Hotelling's T^2, not chi-square. 2000 null runs (ring, K = 8, n = 1000) reject at 0.05 between
    binom.ppf(5e-4, 2000, 0.05) = 69 and binom.isf(5e-4, 2000, 0.05) = 133 times for an exact level (failing with
    probability 1e-3); the chi-square p-value rejected 166 (8 %), the F p-value 104."""
    m = ring()
    gen = torch.Generator().manual_seed(0)
    ps = [mode_weight_test(m.sample(1000, gen), m, n_reference=100, generator=gen).p_value for _ in range(2000)]
    rejections = sum(p <= 0.05 for p in ps)
    assert sps.binom.ppf(5e-4, 2000, 0.05) <= rejections <= sps.binom.isf(5e-4, 2000, 0.05), rejections


def test_log_density_ks_is_calibrated_and_sees_the_spread_within_modes():
    """Exact two-sample null: not anti-conservative over 300 null runs. Modes 20% too wide (ring std 0.6 instead
    of 0.5, n = 1000) are rejected at 1e-6 by it, and missed by the sliced KS and mode-weight tests at LEVEL."""
    m = ring()
    gen = torch.Generator().manual_seed(6)
    assert_exact([log_density_ks_test(m.sample(100, gen), m, n_reference=1000, generator=gen).p_value
                  for _ in range(RUNS)])
    wide = ring(std=0.6).sample(1000, gen)
    assert log_density_ks_test(wide, m, generator=gen).p_value < 1e-6
    assert sliced_ks_test(wide, m, generator=gen).passed(V.LEVEL)
    assert mode_weight_test(wide, m, generator=gen).passed(V.LEVEL)


def test_fitted_order_recovers_a_power_law():
    steps = [10, 20, 40, 80]
    assert V.fitted_order(steps, [3.0 * n**-2.5 for n in steps]) == pytest.approx(2.5, abs=1e-12)


# ---------------------------------------------------------------------- check_sampler
def test_check_sampler_passes_an_exact_sampler_and_fails_a_broken_one():
    sde = VPSDE()
    target = ring()

    def pc(score_fn, x_T):
        return sdescore.pc_sample(sde, score_fn, None, x_T=x_T, steps=200, corrector="none",
                                  generator=torch.Generator().manual_seed(3))

    good = V.check_sampler(pc, sde, target, n=1000)
    assert good.passed and good.nfe == 200 and good.cov_error < 0.1

    def half_score(score_fn, x_T):  # a sampler that gets the score wrong by a factor 1/2
        return pc(lambda x, t: 0.5 * score_fn(x, t), x_T)

    bad = V.check_sampler(half_score, sde, target, n=1000)
    assert not bad.passed
    raw = V.check_sampler(lambda s, x_T: x_T, sde, target, n=500)  # a plain tensor is accepted
    assert raw.nfe is None and not raw.passed


def test_check_sampler_sees_modes_too_wide_that_projections_miss():
    """Reverse-SDE Euler (VP, 250 steps, n = 2000) with 0.9 x the exact score widens every mode of the ring by about
    18% in variance. The sliced KS and mode-weight tests pass it (p ~ 1 and 0.75 at this seed); the KS test of
    log p_eps rejects it (p ~ 1e-7 < LEVEL), so the report fails. With the exact score all three pass."""
    sde = VPSDE()

    def reverse_euler(scale):
        def sample(score_fn, x_T):
            return sde.reverse(lambda x, t: scale * score_fn(x, t)).sample(
                x_T, steps=250, method="euler", eps=V.EPS, generator=torch.Generator().manual_seed(3))
        return sample

    good = V.check_sampler(reverse_euler(1.0), sde, ring(), n=2000)
    assert good.passed
    bad = V.check_sampler(reverse_euler(0.9), sde, ring(), n=2000)
    assert bad.ks.passed(V.LEVEL) and bad.weights.passed(V.LEVEL)
    assert bad.log_density.p_value < 1e-5 and not bad.passed


def test_check_sampler_refuses_bad_arguments():
    with pytest.raises(TypeError, match="sample_fn"):
        V.check_sampler(None, VPSDE(), ring())
    with pytest.raises(TypeError, match="sdescore.SDE"):
        V.check_sampler(lambda s, x: x, "vp", ring())
    with pytest.raises(ValueError, match="t_end"):
        V.check_sampler(lambda s, x: x, VPSDE(), ring(), t_end=2.0)
    with pytest.raises(ValueError, match="returned shape"):
        V.check_sampler(lambda s, x: x[:10], VPSDE(), ring(), n=100)
    with pytest.raises(ValueError, match=r"sample_fn returned non-finite values .* in 3 of its 100 samples"):
        V.check_sampler(lambda s, x: torch.where(torch.arange(100)[:, None] < 3, float("nan"), x), VPSDE(), ring(), n=100)


# ---------------------------------------------------------------------- runner, table, CLI
@pytest.fixture
def extra_checks(monkeypatch):
    registry = dict(V.CHECKS)
    monkeypatch.setattr(V, "CHECKS", registry)

    def failing(ctx):
        """A check that fails on purpose."""
        ctx.at_most("VP", "a figure above its tolerance", 2.0, 1.0)

    def raising(ctx):
        """A check that raises."""
        raise RuntimeError("boom")

    def needy(ctx):
        """A check that needs a function sdescore lacks."""
        raise AssertionError("must not run")

    registry["_failing"] = V.Check("_failing", failing, False, (), "fails")
    registry["_raising"] = V.Check("_raising", raising, False, (), "raises")
    registry["_needy"] = V.Check("_needy", needy, False, ("no_such_function",), "needs")
    return registry


def test_runner_records_failures_exceptions_and_skips(extra_checks):
    rows = V.run_checks(["_failing", "_raising", "_needy"])
    assert [r.status for r in rows] == ["FAIL", "FAIL", "skip"]
    assert "RuntimeError: boom" in rows[1].note
    assert rows[2].note == "not available yet: sdescore.no_such_function"
    table = V.format_table(rows)
    assert "0 passed, 2 failed, 1 skipped" in table


def test_cli_exits_non_zero_when_a_check_fails(extra_checks, capsys):
    assert main(["--only", "_failing"]) == 1
    assert main(["--only", "_needy"]) == 0
    assert "skip" in capsys.readouterr().out


def test_cli_runs_a_check_writes_its_figure_and_lists(tmp_path, capsys):
    assert main(["--only", "converters", "--quick", "--plots", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "converters" in out and "FAIL" not in out
    assert (tmp_path / "score_field_ring_vp.png").stat().st_size > 1000
    assert main(["--list"]) == 0
    assert "sde_weak_order" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--only", "no_such_check"])


def test_run_checks_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown checks"):
        V.run_checks(["nope"])


def test_statistical_tolerances_are_the_stated_levels():
    """Z_MAX = 4.5 is a two-sided normal level of 7e-6 per z-score; LEVEL is the per-row p-value level."""
    assert math.erfc(V.Z_MAX / math.sqrt(2)) < 1e-5
    assert 0 < V.LEVEL <= 1e-2


# ---------------------------------------------------------------------- seed study
def _p_rows(ps):
    """One run per p-value: a row recorded by Context.accepts for a test that returned p."""
    runs = []
    for p in ps:
        ctx = V.Context()
        ctx.check = "_study"
        ctx.accepts("VP", "of a sampler", V.TestResult("a test", statistic=0.0, p_value=float(p), n=100))
        ctx.at_most("VP", "an error", 0.5 if p > 0.01 else 2.0, 1.0)
        runs.append(ctx.rows)
    return runs


def test_seed_study_flags_p_values_that_lean_low_and_rows_that_ever_fail():
    """Uniform p-values over 40 seeds pass (a chance failure at 1e-3 would not flag them: the null allows it); p-values
    of a biased sampler, uniform on [0.0005, 0.3005], are flagged by the one-sided KS test (its p 5e-21) although
    none of them is below 1e-3, so that no single run fails; conservative p-values (all 1) pass. A row without
    p-values is flagged once it fails in any seed."""
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(40, generator=gen, dtype=torch.float64)
    for ps, flagged in ((u, False), (0.0005 + 0.3 * u, True), (torch.ones(40), False)):
        study = {r.measure: r for r in V.seed_study(_p_rows(ps.tolist()))}
        row = study["p, a test: of a sampler"]
        assert row.seeds == 40 and row.flagged is flagged, (row, flagged)
        assert row.worst == float(ps.min())
        assert row.uniformity_p == pytest.approx(sps.kstest(ps.tolist(), "uniform", alternative="greater").pvalue)
        assert study["an error"].flagged is (row.worst <= 0.01)
    with_chance_failure = torch.cat([u[:39], torch.tensor([5e-4], dtype=torch.float64)])
    row, error = V.seed_study(_p_rows(with_chance_failure.tolist()))
    assert row.failures == 1 and not row.flagged
    assert error.measure == "an error" and error.failures == 1 and error.flagged


def test_seed_study_worst_figure_is_the_one_nearest_to_failing():
    assert V._worst([1.0, 3.0, 2.0], "<= 4") == 3.0
    assert V._worst([1.0, 3.0, 2.0], ">= 0.5") == 1.0
    assert V._worst([1.9, 2.3, 2.05], "2 +- 0.5") == 2.3
    assert V._worst([0.0, 1.0], "== 0") == 1.0


def test_cli_seed_study_runs_each_seed_and_exits_non_zero_on_a_flag(extra_checks, capsys):
    assert main(["--only", "converters", "--quick", "--seeds", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "rows over seeds 1-2: 0 flagged" in out and "converters" in out
    assert main(["--only", "_failing", "--seeds", "0", "1"]) == 1
    assert "1 flagged" in capsys.readouterr().out
    for bad in (["--seeds", "3", "3"], ["--seeds", "-1", "2"], ["--seeds", "1", "2", "--plots", "out"]):
        with pytest.raises(SystemExit):
            main(["--only", "converters", *bad])
