"""U-Nets for images: NCSNUNet (a noise-conditional score network for VE models) and DDPMUNet (epsilon head for VP).

Both share one backbone in the layout of DDPM (Ho et al. 2020, appendix B): residual blocks with
GroupNorm, SiLU and an added time embedding, self-attention at chosen levels, strided-convolution
downsampling and nearest-neighbour upsampling with skip connections. They differ in what they condition
on and what they output.

Image sizes: a U-Net with L = len(channel_mults) levels halves the resolution L - 1 times, so H and W
must be divisible by 2^(L-1). With L <= 4 every multiple of 8 works, 8x8 included (4 levels reach 1x1).
MNIST's 28x28 works with L <= 3; pad it to 32x32 for 4 levels.

Defaults are small (a forward and backward pass on 64 images of 8x8 takes a fraction of a second on two
CPU cores). The paper-size CIFAR-10 settings (32x32) are
    DDPM (Ho et al. 2020):      DDPMUNet(3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                                         attention_levels=(1,), dropout=0.1, num_groups=32)
    NCSN++/DDPM++ (Song et al. 2021, appendix H): the same with num_res_blocks=4 (about 60M parameters).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_bool, check_int, check_real
from .embeddings import check_conditioning, check_input_dtype, embed_conditioning, make_embedding

__all__ = ["NCSNUNet", "DDPMUNet"]


def _zero(module: nn.Module) -> nn.Module:
    # DDPM initialises the last layer of each residual branch and the output to zero (init_scale=0): every
    # block starts as the identity and the network's output starts at 0.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h = skip(x) + conv(dropout(silu(norm(conv(silu(norm(x))) + W silu(temb))))), DDPM's residual block."""

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions with a residual connection (DDPM's AttnBlock)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, H*W, C), softmax(q k^T / sqrt(C)) v
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class _Level(nn.Module):
    """One resolution of the U-Net: residual blocks, each followed by attention or nothing, then a resampling."""

    def __init__(self, blocks: list[ResBlock], attention: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attention = nn.ModuleList(attention)
        self.resample = resample


class _Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _UNet(nn.Module):
    """The shared backbone: (B, C, H, W) x embedding(t) (B, E) -> (B, C, H, W)."""

    def __init__(
        self,
        channels: int,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        attention_levels: Sequence[int],
        mid_attention: bool,
        dropout: float,
        num_groups: int,
        embedding: nn.Module,
        builtin_embedding: bool,
    ):
        super().__init__()
        self._builtin_embedding = builtin_embedding  # embed_conditioning: t reaches a built-in embedding unrounded
        self.channels = check_int("channels", channels, minimum=1)
        base = check_int("base_channels", base_channels, minimum=1)
        num_res_blocks = check_int("num_res_blocks", num_res_blocks, minimum=1)
        groups = check_int("num_groups", num_groups, minimum=1)
        dropout = check_real("dropout", dropout, nonnegative=True)
        if dropout >= 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        mid_attention = check_bool("mid_attention", mid_attention)
        if isinstance(channel_mults, (str, bytes)) or not isinstance(channel_mults, Sequence) or not channel_mults:
            raise TypeError(f"channel_mults must be a non-empty sequence of positive ints, e.g. (1, 2, 2), got {channel_mults!r}.")
        mults = [check_int(f"channel_mults[{i}]", m, minimum=1) for i, m in enumerate(channel_mults)]
        if base % groups:  # every width (conv_in, each level base * m, the skips) is a multiple of base
            raise ValueError(
                f"base_channels = {base} is not divisible by num_groups={groups} (GroupNorm); choose base_channels "
                "as a multiple of num_groups."
            )
        if isinstance(attention_levels, (str, bytes)) or not isinstance(attention_levels, Sequence):
            raise TypeError(f"attention_levels must be a sequence of level indices, e.g. (1,), got {attention_levels!r}.")
        attn = {check_int("attention_levels", a, minimum=0) for a in attention_levels}
        if attn and max(attn) >= len(mults):
            raise ValueError(
                f"attention_levels must index channel_mults (0..{len(mults) - 1}), got {sorted(attn)}; level i has "
                f"resolution H / 2^i."
            )
        self.channel_mults = tuple(mults)
        self.n_down = len(mults) - 1

        temb_dim = 4 * base
        self.embed = nn.Sequential(embedding, nn.Linear(embedding.dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(self.channels, base, 3, padding=1)

        def attention(level: int, ch: int) -> nn.Module:
            return AttentionBlock(ch, groups) if level in attn else nn.Identity()

        skips, ch = [base], base
        down = []
        for i, m in enumerate(mults):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, base * m, temb_dim, dropout, groups))
                ch = base * m
                attns.append(attention(i, ch))
                skips.append(ch)
            last = i == len(mults) - 1
            down.append(_Level(blocks, attns, None if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1)))
            if not last:
                skips.append(ch)
        self.down = nn.ModuleList(down)

        self.mid1 = ResBlock(ch, ch, temb_dim, dropout, groups)
        self.mid_attention = AttentionBlock(ch, groups) if mid_attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, temb_dim, dropout, groups)

        up = []
        for i, m in reversed(list(enumerate(mults))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(ch + skips.pop(), base * m, temb_dim, dropout, groups))
                ch = base * m
                attns.append(attention(i, ch))
            up.append(_Level(blocks, attns, _Upsample(ch) if i > 0 else None))
        self.up = nn.ModuleList(up)

        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = _zero(nn.Conv2d(ch, self.channels, 3, padding=1))

    def check_images(self, x: object) -> Tensor:
        C, factor = self.channels, 2**self.n_down
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, {C}, H, W), got {type(x).__name__}.")
        if x.ndim != 4 or x.shape[1] != C:
            raise ValueError(
                f"x must have shape (B, {C}, H, W) for this network (channels={C}), got shape {tuple(x.shape)}."
            )
        H, W = x.shape[2:]
        if H % factor or W % factor or H == 0 or W == 0:
            raise ValueError(
                f"x has spatial size {H}x{W}, but with len(channel_mults)={self.n_down + 1} levels H and W must be "
                f"positive multiples of 2^{self.n_down} = {factor}; pad the images or use fewer channel_mults."
            )
        return check_input_dtype(x, self.conv_in.weight)

    def backbone(self, x: Tensor, t: Tensor) -> Tensor:
        temb = embed_conditioning(self.embed, t, x.dtype, builtin=self._builtin_embedding)
        h = self.conv_in(x)
        hs = [h]
        for level in self.down:
            for block, attn in zip(level.blocks, level.attention):
                h = attn(block(h, temb))
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)
                hs.append(h)
        h = self.mid2(self.mid_attention(self.mid1(h, temb)), temb)
        for level in self.up:
            for block, attn in zip(level.blocks, level.attention):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), temb))
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _embedding(
    embedding: str | nn.Module, embedding_dim: int | None, base_channels: int, *, log_input: bool, fourier_scale: float
) -> nn.Module:
    """make_embedding with the U-Nets' default embedding_dim, base_channels, named as such where it is at fault."""
    base = check_int("base_channels", base_channels, minimum=1)
    if embedding_dim is None:
        return make_embedding(embedding, base, log_input=log_input, fourier_scale=fourier_scale,
                              dim_name=f"embedding_dim (default: base_channels = {base})")
    return make_embedding(embedding, check_int("embedding_dim", embedding_dim, minimum=2), log_input=log_input,
                          fourier_scale=fourier_scale)


class NCSNUNet(_UNet):
    """Noise-conditional score network s(x, sigma) ~ grad_x log p_sigma(x) for VE models (NCSN as a U-Net).

    Song & Ermon (2019) condition the network on the noise level; NCSNv2 (Song & Ermon 2020, technique 3)
    divides the output by sigma, s(x, sigma) = F(x, sigma) / sigma, so the network's output has unit scale
    at every level; NCSN++ (Song et al. 2021, appendix H.1) embeds log(sigma) with Fourier features. The
    input t is the noise level sigma > 0 (for a VE SDE, sigma(t); the converters map t to sigma).

    Args:
        channels: image channels C.
        base_channels: channels of the first level; level i has base_channels * channel_mults[i].
        channel_mults: one multiplier per level; L levels halve the resolution L - 1 times.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: indices of the levels with self-attention after each residual block.
        mid_attention: self-attention between the two residual blocks at the lowest resolution.
        dropout: dropout probability in the residual blocks.
        num_groups: GroupNorm groups; every level's channel count must be divisible by it.
        embedding: "fourier" or "sinusoidal", or a module with attribute `dim` (its number of output
            features); either receives log(sigma), checked > 0. A built-in embedding is computed in float32
            whatever the network's dtype, its features rounded once to that dtype; a module receives log(sigma)
            in the network's dtype.
        embedding_dim: features of the noise embedding (default base_channels).
        fourier_scale: scale of the Fourier features.
        scale_by_sigma: divide the output by sigma (NCSNv2).
    Shapes: forward(x (B, C, H, W), sigma (B,)) -> score (B, C, H, W).
    """

    def __init__(
        self,
        channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        *,
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        mid_attention: bool = True,
        dropout: float = 0.0,
        num_groups: int = 8,
        embedding: str | nn.Module = "fourier",
        embedding_dim: int | None = None,
        fourier_scale: float = 16.0,
        scale_by_sigma: bool = True,
    ):
        embed = _embedding(embedding, embedding_dim, base_channels, log_input=True, fourier_scale=fourier_scale)
        super().__init__(
            channels, base_channels, channel_mults, num_res_blocks, attention_levels, mid_attention, dropout,
            num_groups, embed, not isinstance(embedding, nn.Module),
        )
        self.scale_by_sigma = check_bool("scale_by_sigma", scale_by_sigma)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        x = self.check_images(x)
        sigma = check_conditioning(t, x.shape[0], name="t (the noise level sigma)")
        out = self.backbone(x, sigma)
        if self.scale_by_sigma:
            out = out / sigma.to(out.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return out


class DDPMUNet(_UNet):
    """Noise-prediction network eps(x_t, t) of DDPM (Ho et al. 2020, eq. 14 and appendix B) for VP models.

    Trained with the epsilon loss ||eps - eps(sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, t)||^2; its score
    is -eps(x, t) / std(t) (sdescore.score_from_eps). Time t in [0, 1] enters through a sinusoidal embedding
    of 1000 t, DDPM's integer step range.

    Args:
        channels: image channels C.
        base_channels: channels of the first level; level i has base_channels * channel_mults[i].
        channel_mults: one multiplier per level; L levels halve the resolution L - 1 times.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: indices of the levels with self-attention (DDPM: resolution 16 of 32, level 1).
        mid_attention: self-attention between the two residual blocks at the lowest resolution.
        dropout: dropout probability in the residual blocks (DDPM: 0.1 on CIFAR-10).
        num_groups: GroupNorm groups (DDPM: 32); every level's channel count must be divisible by it.
        embedding: "sinusoidal" or "fourier", or a module with attribute `dim`; it receives t. A built-in
            embedding is computed in float32 whatever the network's dtype, its features rounded once to that
            dtype; a module receives t in the network's dtype.
        embedding_dim: features of the time embedding (default base_channels).
        fourier_scale: scale of the Fourier features (for embedding="fourier").
    Shapes: forward(x (B, C, H, W), t (B,)) -> eps (B, C, H, W).
    """

    def __init__(
        self,
        channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        *,
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (1,),
        mid_attention: bool = True,
        dropout: float = 0.1,
        num_groups: int = 8,
        embedding: str | nn.Module = "sinusoidal",
        embedding_dim: int | None = None,
        fourier_scale: float = 16.0,
    ):
        embed = _embedding(embedding, embedding_dim, base_channels, log_input=False, fourier_scale=fourier_scale)
        super().__init__(
            channels, base_channels, channel_mults, num_res_blocks, attention_levels, mid_attention, dropout,
            num_groups, embed, not isinstance(embedding, nn.Module),
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        x = self.check_images(x)
        t = check_conditioning(t, x.shape[0])
        return self.backbone(x, t)
