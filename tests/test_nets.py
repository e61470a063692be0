"""Networks: shapes for every supported image size, the embeddings in closed form, NCSNv2's 1/sigma scaling,
conditioning, state dicts under weights_only, speed of the defaults, and the input checks."""

from __future__ import annotations

import copy
import io
import math
import time

import pytest
import torch

from sdescore.nets import DDPMUNet, GaussianFourierProjection, NCSNUNet, ScoreMLP, SinusoidalEmbedding

UNETS = [NCSNUNet, DDPMUNet]


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace the zero-initialised output layers by random weights so the output depends on its inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _sigmas(b: int) -> torch.Tensor:
    return torch.linspace(0.01, 50.0, b)


# ------------------------------------------------------------------------------------------ embeddings
def test_fourier_projection_is_sin_cos_of_fixed_gaussian_frequencies():
    emb = GaussianFourierProjection(8, scale=16.0, generator=torch.Generator().manual_seed(0))
    assert [n for n, _ in emb.named_parameters()] == [] and "W" in emb.state_dict()
    t = torch.tensor([0.0, 0.3, 1.0])
    W = emb.W
    expected = torch.cat([torch.sin(2 * math.pi * t[:, None] * W), torch.cos(2 * math.pi * t[:, None] * W)], dim=1)
    torch.testing.assert_close(emb(t), expected)
    assert emb(t).shape == (3, 8)
    assert float(W.std()) > 4.0  # scale 16: N(0, 16^2) frequencies


def test_log_input_embeds_the_logarithm():
    emb = GaussianFourierProjection(6, log_input=True)
    plain = GaussianFourierProjection(6)
    plain.load_state_dict(emb.state_dict())
    sigma = torch.tensor([0.01, 1.0, 50.0])
    torch.testing.assert_close(emb(sigma), plain(torch.log(sigma)))
    with pytest.raises(ValueError, match="> 0"):
        emb(torch.tensor([0.0, 1.0]))


class _Recorder(torch.nn.Module):
    """A custom embedding that records what it receives."""

    dim = 4

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.proj = torch.nn.Linear(1, 4)

    def forward(self, t):
        self.seen.append(t.detach().clone())
        return self.proj(t[:, None])


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda emb: NCSNUNet(1, base_channels=16, embedding=emb), torch.randn(3, 1, 8, 8)),
        (lambda emb: ScoreMLP(2, hidden=8, depth=1, embedding=emb, log_input=True), torch.randn(3, 2)),
    ],
    ids=["NCSNUNet", "ScoreMLP(log_input=True)"],
)
def test_custom_embedding_module_receives_log_sigma_as_documented(make, x):
    emb = _Recorder()
    net = make(emb)
    sigma = torch.tensor([0.01, 1.0, 50.0])
    net(x, sigma)
    torch.testing.assert_close(emb.seen[-1], torch.log(sigma))
    with pytest.raises(ValueError, match="> 0"):
        net(x, torch.tensor([0.0, 1.0, 2.0]))


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda emb: DDPMUNet(1, base_channels=16, embedding=emb), torch.randn(3, 1, 8, 8)),
        (lambda emb: ScoreMLP(2, hidden=8, depth=1, embedding=emb), torch.randn(3, 2)),
    ],
    ids=["DDPMUNet", "ScoreMLP"],
)
def test_custom_embedding_module_receives_t_without_log_input(make, x):
    emb = _Recorder()
    t = torch.tensor([0.0, 0.5, 1.0])
    make(emb)(x, t)
    torch.testing.assert_close(emb.seen[-1], t)


def test_sinusoidal_embedding_matches_the_transformer_formula():
    dim, s = 6, 1000.0
    emb = SinusoidalEmbedding(dim, input_scale=s)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    out = emb(t)
    for k in range(dim // 2):
        w = 10000.0 ** (-k / (dim // 2 - 1))
        torch.testing.assert_close(out[:, k], torch.sin(s * t * w))
        torch.testing.assert_close(out[:, dim // 2 + k], torch.cos(s * t * w))


@pytest.mark.parametrize("make", [lambda: GaussianFourierProjection(7), lambda: SinusoidalEmbedding(5)])
def test_embeddings_reject_odd_dim(make):
    with pytest.raises(ValueError, match="dim must be even"):
        make()


@pytest.mark.parametrize("t, error", [(torch.zeros(2, 1), ValueError), (torch.zeros(2, dtype=torch.long), TypeError), ([0.1], TypeError)])
def test_embeddings_reject_bad_times(t, error):
    with pytest.raises(error, match="t must"):
        SinusoidalEmbedding(8)(t)


# Half precision: (module in dtype, float64 features of the same (t, W)); t and W exactly representable in dtype
# where the module holds them, so the only rounding left to the module is that of its result.
def _fourier(log_input: bool):
    emb = GaussianFourierProjection(64, log_input=log_input, generator=torch.Generator().manual_seed(0))
    W = emb.W.double()  # float32 frequencies: the half-precision module must keep these values

    def exact(t):
        s = torch.log(t) if log_input else t
        return torch.cat([torch.sin(2 * math.pi * s[:, None] * W), torch.cos(2 * math.pi * s[:, None] * W)], 1)

    return emb, exact, float(2 * math.pi * W.abs().max())


def _sinusoidal(log_input: bool):
    emb = SinusoidalEmbedding(64, log_input=log_input)
    w = 10000.0 ** (-torch.arange(32, dtype=torch.float64) / 31)

    def exact(t):
        s = 1000.0 * (torch.log(t) if log_input else t)
        return torch.cat([torch.sin(s[:, None] * w), torch.cos(s[:, None] * w)], 1)

    return emb, exact, 1000.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize(
    "make, log_input",
    [(_sinusoidal, False), (_fourier, False), (_sinusoidal, True), (_fourier, True)],
    ids=["sinusoidal", "fourier", "sinusoidal(log sigma)", "fourier(log sigma)"],
)
def test_half_precision_embedding_is_float64_features_rounded_once(dtype, make, log_input):
    emb, exact, scale = make(log_input)
    W = getattr(emb, "W", None)
    emb = copy.deepcopy(emb).to(dtype)  # a half-precision module, as model.half() / model.bfloat16() makes it
    if W is not None:
        assert emb.W.dtype == torch.float32 and torch.equal(emb.W, W), "the frequencies were rounded to half"
    t = (torch.logspace(-2, math.log10(50), 64) if log_input else torch.linspace(0.01, 1.0, 64)).to(dtype)
    f64 = exact(t.double())
    f32 = emb(t.float()).double()
    low = emb(t)
    assert low.dtype == dtype
    # The float32 features: arguments |a| <= A = scale * max|s| formed by a few float32 roundings, |da| <= 8 A 2^-24,
    # and sin, cos are 1-Lipschitz.
    A = scale * float((torch.log(t.double()) if log_input else t.double()).abs().max())
    assert float((f32 - f64).abs().max()) <= 8 * A * 2.0**-24
    # One rounding of those to dtype: at most u |f32| (u = eps / 2, the unit roundoff), or half a subnormal's
    # spacing below the normal range. The old module formed the arguments in dtype: errors of 0.09 to 1.7.
    info = torch.finfo(dtype)
    bound = info.eps / 2 * f32.abs() + info.smallest_normal * info.eps / 2 + (f32 - f64).abs()
    err = (low.double() - f64).abs()
    assert bool((err <= bound).all()), f"max error {float(err.max()):.3g} beyond one rounding ({float(bound.max()):.3g})"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: ScoreMLP(2, hidden=8, depth=1), torch.randn(4, 2)),
        (lambda: ScoreMLP(2, hidden=8, depth=1, embedding="sinusoidal"), torch.randn(4, 2)),
        (lambda: DDPMUNet(1, base_channels=16), torch.randn(4, 1, 8, 8)),
        (lambda: NCSNUNet(1, base_channels=16), torch.randn(4, 1, 8, 8)),
    ],
    ids=["ScoreMLP(fourier)", "ScoreMLP(sinusoidal)", "DDPMUNet", "NCSNUNet(log sigma)"],
)
def test_half_precision_network_embeds_t_in_float32_and_rounds_the_features_once(dtype, make, x):
    net32 = make().eval()
    net = copy.deepcopy(net32).to(dtype)
    seen = []
    net.embed[1].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    t = torch.tensor([0.013, 0.25, 0.6071, 0.99])  # float32, not representable in dtype
    with torch.no_grad():
        net(x.to(dtype), t)
        expected = net32.embed[0](t).to(dtype)  # the float32 network's features, rounded once
    assert seen[0].dtype == dtype and torch.equal(seen[0], expected)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: ScoreMLP(2, embedding_dim=3), ValueError, r"embedding_dim must be even and >= 2 .*got 3"),
        (lambda: ScoreMLP(2, embedding_dim=2, embedding="sinusoidal"), ValueError, r"embedding_dim must be even and >= 4"),
        (lambda: DDPMUNet(1, embedding_dim=2), ValueError, r"embedding_dim must be even and >= 4 .*got 2"),
        (lambda: DDPMUNet(1, base_channels=2, num_groups=1), ValueError, r"embedding_dim \(default: base_channels = 2\)"),
        (lambda: ScoreMLP(2, fourier_scale=0), ValueError, r"fourier_scale must be > 0"),
        (lambda: NCSNUNet(1, fourier_scale=-1.0), ValueError, r"fourier_scale must be > 0"),
        (lambda: NCSNUNet(1, scale_by_sigma="no"), TypeError, r"scale_by_sigma must be True or False, got str 'no'"),
        (lambda: NCSNUNet(1, mid_attention="no"), TypeError, r"mid_attention must be True or False"),
        (lambda: DDPMUNet(1, mid_attention=0), TypeError, r"mid_attention must be True or False"),
        (lambda: ScoreMLP(2, log_input="no"), TypeError, r"log_input must be True or False"),
        (lambda: GaussianFourierProjection(8, log_input="yes"), TypeError, r"log_input must be True or False"),
        (lambda: SinusoidalEmbedding(8, log_input=1), TypeError, r"log_input must be True or False"),
    ],
)
def test_network_arguments_are_checked_under_their_own_names(make, error, match):
    with pytest.raises(error, match=match):
        make()


# ------------------------------------------------------------------------------------------ MLP
def test_score_mlp_maps_vectors_to_vectors_in_both_float_dtypes():
    model = ScoreMLP(3, hidden=16, depth=2, embedding_dim=8)
    x, t = torch.randn(5, 3), torch.rand(5)
    assert model(x, t).shape == (5, 3)
    model64 = ScoreMLP(3, hidden=16, depth=2, embedding_dim=8, embedding="sinusoidal").double()
    assert model64(x.double(), t.double()).dtype == torch.float64


def test_score_mlp_output_depends_on_t():
    model = ScoreMLP(2)
    x = torch.randn(4, 2)
    assert not torch.allclose(model(x, torch.full((4,), 0.1)), model(x, torch.full((4,), 0.9)))


@pytest.mark.parametrize(
    "x, t, error, match",
    [
        (torch.randn(4, 3), torch.rand(4), ValueError, r"shape \(B, 2\)"),
        (torch.randn(4, 2), torch.rand(3), ValueError, r"t must have shape \(4,\)"),
        (torch.randn(4, 2).double(), torch.rand(4), TypeError, "dtype"),
        (torch.zeros(4, 2, dtype=torch.long), torch.rand(4), TypeError, r"x must be a floating tensor, got dtype torch.int64; pass x.to\(torch.float32\)"),
    ],
)
def test_score_mlp_rejects_bad_input(x, t, error, match):
    with pytest.raises(error, match=match):
        ScoreMLP(2)(x, t)


@pytest.mark.parametrize("kwargs, match", [(dict(depth=0), "depth"), (dict(dropout=1.0), "dropout"), (dict(embedding="rope"), "embedding")])
def test_score_mlp_rejects_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScoreMLP(2, **kwargs)


# ------------------------------------------------------------------------------------------ U-Nets
@pytest.mark.parametrize("net", UNETS)
@pytest.mark.parametrize("size", [8, 16, 24, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_unet_output_has_the_shape_of_x_for_multiples_of_8(net, size, channels):
    model = net(channels, base_channels=16)
    x = torch.randn(2, channels, size, size)
    assert model(x, _sigmas(2)).shape == x.shape


@pytest.mark.parametrize("net", UNETS)
def test_unet_paper_layout_with_four_levels_runs_on_8x8_and_non_square(net):
    model = net(1, base_channels=16, channel_mults=(1, 2, 2, 2), attention_levels=(1,))
    for shape in [(2, 1, 8, 8), (2, 1, 16, 8), (2, 1, 32, 32)]:
        assert model(torch.randn(shape), _sigmas(2)).shape == shape


@pytest.mark.parametrize("net", UNETS)
def test_unet_rejects_sizes_not_divisible_by_its_downsampling(net):
    model = net(1, base_channels=16)  # 3 levels: H, W multiples of 4
    assert model(torch.randn(1, 1, 28, 28), _sigmas(1)).shape == (1, 1, 28, 28)  # MNIST works with 3 levels
    with pytest.raises(ValueError, match=r"spatial size 10x10.*channel_mults"):
        model(torch.randn(1, 1, 10, 10), _sigmas(1))
    with pytest.raises(ValueError, match=r"channels=1"):
        model(torch.randn(1, 3, 8, 8), _sigmas(1))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(1, 64), _sigmas(1))
    with pytest.raises(ValueError, match=r"t .*shape \(2,\)"):
        model(torch.randn(2, 1, 8, 8), _sigmas(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(base_channels=12), "num_groups"),
        (dict(base_channels=4, channel_mults=(2, 4)), r"base_channels = 4 is not divisible by num_groups=8"),
        (dict(channel_mults=()), "channel_mults"),
        (dict(channel_mults=(1, 0)), r"channel_mults\[1\]"),
        (dict(attention_levels=(3,)), "attention_levels"),
        (dict(channels=0), "channels"),
        (dict(dropout=-0.1), "dropout"),
    ],
)
@pytest.mark.parametrize("net", UNETS)
def test_unet_rejects_bad_construction_by_name(net, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        net(**kwargs)


def test_ncsn_scale_by_sigma_divides_the_output_by_sigma():
    scaled = _randomize(NCSNUNet(1, base_channels=16, scale_by_sigma=True))
    plain = NCSNUNet(1, base_channels=16, scale_by_sigma=False)
    plain.load_state_dict(scaled.state_dict())
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.01, 1.0, 50.0])
    torch.testing.assert_close(scaled(x, sigma), plain(x, sigma) / sigma[:, None, None, None])


def test_ncsn_rejects_nonpositive_noise_levels():
    with pytest.raises(ValueError, match="> 0"):
        NCSNUNet(1, base_channels=16)(torch.randn(2, 1, 8, 8), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("net", UNETS)
def test_unet_is_conditioned_on_t_and_starts_at_zero_output(net):
    model = net(1, base_channels=16, dropout=0.0).eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.count_nonzero(model(x, _sigmas(2))) == 0  # DDPM's zero-initialised output layer
    _randomize(model)
    a, b = model(x, torch.full((2,), 0.1)), model(x, torch.full((2,), 0.9))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("net", UNETS)
def test_unet_state_dict_round_trips_through_weights_only_load(net):
    model = _randomize(net(1, base_channels=16))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    clone = net(1, base_channels=16)
    clone.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(clone.eval()(x, _sigmas(2)), model.eval()(x, _sigmas(2)))


@pytest.mark.parametrize("net", UNETS)
def test_default_unet_forward_backward_on_64_digits_is_fast(net):
    model = net(1)
    x, t = torch.randn(64, 1, 8, 8), torch.rand(64) + 0.01
    # One thread: two OpenMP threads slow down by 50x when other processes share the two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            model(x, t).square().mean().backward()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    # 0.08 s on 2 idle cores, 0.3 s on one loaded core; the bound catches a regression of the defaults' size
    assert min(times) < 2.0, times
