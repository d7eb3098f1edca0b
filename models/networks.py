"""The raw networks F(x_in, c_noise) behind a denoiser: an MLP for low-dimensional data and a
small U-Net for images.

Both take the preconditioned input ``c_in * x`` and the noise conditioning ``c_noise`` (one
value per example, see ``objectives.parameterisations``) and return a tensor shaped like the
input. Neither knows about sigma: the preconditioning lives in ``models.denoiser.Denoiser``
(Karras et al. 2022, eq. 7). The output layers are zero-initialised, so an untrained network
returns F = 0 (as in NVlabs/edm's ``init_zero`` for the last layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

__all__ = ["MLP", "NETWORKS", "NoiseEmbedding", "UNet", "make_network"]


# ----------------------------------------------------------------------------- embedding


class NoiseEmbedding(nn.Module):
    """Fourier features of ``c_noise``: [cos(2 pi f_i c), sin(2 pi f_i c)], i = 1..dim/2.

    The frequencies f_i are fixed and log-spaced in [``min_freq``, ``max_freq``] (cycles per
    unit of c_noise; Tancik et al. 2020, Fourier features), so a network is fully determined by
    its state dict and ``c_noise`` ranges of a few units (EDM: ln(sigma)/4 in about
    [-1.6, 1.1]) are resolved both coarsely and finely.
    """

    def __init__(self, dim: int, min_freq: float = 1 / 16, max_freq: float = 8.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"emb_dim must be an even integer >= 2, but got emb_dim={dim}")
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), dim // 2))
        self.register_buffer("freqs", 2 * math.pi * freqs, persistent=False)

    def forward(self, c_noise: Tensor) -> Tensor:
        """c_noise [B] -> features [B, dim]."""
        arg = c_noise.reshape(-1, 1).to(self.freqs.dtype) * self.freqs[None, :]  # [B, dim/2]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, but got {name}={value!r}")


# ----------------------------------------------------------------------------- MLP


class _MLPBlock(nn.Module):
    """Pre-norm residual block, h + W2 silu(W1 silu(LN(h)) + E emb)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        a = self.fc1(nnf.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(nnf.silu(a))


class MLP(nn.Module):
    """Residual MLP for x [B, dim], conditioned on c_noise through Fourier features.

    Args:
        dim: data dimension d.
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        emb_dim: number of Fourier features of c_noise (even).
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, emb_dim: int = 64) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            _check_positive_int(name, value)
        self.dim = dim
        self.embed = NoiseEmbedding(emb_dim)
        self.emb_mlp = nn.Sequential(
            nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_MLPBlock(hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """x [B, dim], c_noise [B] -> [B, dim]."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape [B, {self.dim}], but got {tuple(x.shape)}")
        emb = self.emb_mlp(self.embed(c_noise).to(x.dtype))  # [B, hidden]
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nnf.silu(self.norm(h)))


# ----------------------------------------------------------------------------- U-Net


def _groups(channels: int, max_groups: int = 32) -> int:
    """Largest number of GroupNorm groups <= max_groups dividing ``channels``, with >= 4 channels
    per group where possible."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0 and (channels // g >= 4 or g == 1):
            return g
    return 1


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the noise embedding as adaptive scale and shift of the
    second normalisation (Dhariwal & Nichol 2021, AdaGN), and a 1x1 skip when widths differ.
    The sum is scaled by sqrt(1/2) as in NVlabs/edm's ``UNetBlock`` (``skip_scale``)."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_ch, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nnf.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # [B, out, 1, 1] each
        h = nnf.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        return (h + self.skip(x)) * math.sqrt(0.5)


class _Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual (Ho et al. 2020)."""

    def __init__(self, channels: int, head_channels: int = 32) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # [B, heads, HW, C/heads]
        h = nnf.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, C/heads]
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return (x + self.proj(h)) * math.sqrt(0.5)


class _Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nnf.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """A small U-Net in the style of DDPM (Ho et al. 2020) / EDM's DDPM++ (Karras et al. 2022).

    Levels ``i = 0..L-1`` have ``channels * channel_mult[i]`` channels and resolution
    ``size / 2**i``; each has ``num_blocks`` residual blocks (self-attention after each where
    the resolution is in ``attn_resolutions``) on the way down and ``num_blocks + 1`` with skip
    connections on the way up; a middle of two residual blocks (with attention between them if
    the lowest resolution is listed). Inputs whose sides are not multiples of ``2**(L-1)`` are
    reflect-padded to the next multiple and the output cropped back (so 28x28 works with any
    ``channel_mult``); ``image_size`` is used to name the resolutions of the levels.

    Args:
        in_channels: image channels C (also the output channels).
        channels: base width.
        channel_mult: width multiplier per level; ``len(channel_mult)`` levels.
        num_blocks: residual blocks per level on the way down.
        attn_resolutions: resolutions (side lengths, after padding) with self-attention.
        image_size: side length of the (square) images the network is built for.
        dropout: dropout probability inside the residual blocks.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_blocks: int = 1,
        attn_resolutions: Sequence[int] = (),
        image_size: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("channels", channels),
            ("num_blocks", num_blocks),
            ("image_size", image_size),
        ):
            _check_positive_int(name, value)
        channel_mult = tuple(channel_mult)
        if not channel_mult or not all(isinstance(m, int) and m >= 1 for m in channel_mult):
            raise ValueError(
                "channel_mult must be a non-empty sequence of integers >= 1, "
                f"but got channel_mult={channel_mult!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), but got dropout={dropout!r}")
        levels = len(channel_mult)
        self.multiple = 2 ** (levels - 1)
        padded = -(-image_size // self.multiple) * self.multiple
        self.resolutions = tuple(padded // 2**i for i in range(levels))
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        unknown = sorted(set(attn_resolutions) - set(self.resolutions))
        if unknown:
            raise ValueError(
                f"attn_resolutions must be among the level resolutions {list(self.resolutions)} "
                f"(image_size={image_size}, channel_mult={channel_mult}), "
                f"but got attn_resolutions={list(attn_resolutions)}"
            )
        self.in_channels = in_channels
        emb_ch = 4 * channels
        self.embed = NoiseEmbedding(channels if channels % 2 == 0 else channels + 1)
        self.emb_mlp = nn.Sequential(
            nn.Linear(self.embed.freqs.numel() * 2, emb_ch),
            nn.SiLU(),
            nn.Linear(emb_ch, emb_ch),
            nn.SiLU(),
        )
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        # Encoder: residual blocks and downsamplers in order; each pushes a skip.
        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        skip_ch = [channels]
        ch = channels
        for i, mult in enumerate(channel_mult):
            use_attn = self.resolutions[i] in attn_resolutions
            for _ in range(num_blocks):
                self.down.append(_ResBlock(ch, channels * mult, emb_ch, dropout))
                ch = channels * mult
                self.down_attn.append(_Attention(ch) if use_attn else nn.Identity())
                skip_ch.append(ch)
            if i < levels - 1:
                self.down.append(_Downsample(ch))
                self.down_attn.append(nn.Identity())
                skip_ch.append(ch)

        self.mid1 = _ResBlock(ch, ch, emb_ch, dropout)
        self.mid_attn = _Attention(ch) if self.resolutions[-1] in attn_resolutions else None
        self.mid2 = _ResBlock(ch, ch, emb_ch, dropout)

        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for i in reversed(range(levels)):
            use_attn = self.resolutions[i] in attn_resolutions
            out_ch = channels * channel_mult[i]
            for _ in range(num_blocks + 1):
                self.up.append(_ResBlock(ch + skip_ch.pop(), out_ch, emb_ch, dropout))
                ch = out_ch
                self.up_attn.append(_Attention(ch) if use_attn else nn.Identity())
            if i > 0:
                self.up.append(_Upsample(ch))
                self.up_attn.append(nn.Identity())
        assert not skip_ch

        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = _zero(nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """x [B, C, H, W], c_noise [B] -> [B, C, H, W]."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects x of shape [B, {self.in_channels}, H, W], but got {tuple(x.shape)}"
            )
        H, W = x.shape[-2:]
        pad_h = -H % self.multiple
        pad_w = -W % self.multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < H and pad_w < W else "replicate"
            x = nnf.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        emb = self.emb_mlp(self.embed(c_noise).to(x.dtype))  # [B, 4*channels]

        h = self.conv_in(x)
        skips = [h]
        for block, attn in zip(self.down, self.down_attn):
            h = block(h, emb) if isinstance(block, _ResBlock) else block(h)
            h = attn(h)
            skips.append(h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h, emb)
        for block, attn in zip(self.up, self.up_attn):
            if isinstance(block, _ResBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = block(h)
            h = attn(h)
        h = self.conv_out(nnf.silu(self.norm_out(h)))
        return h[:, :, :H, :W]


# ----------------------------------------------------------------------------- registry


def make_network(name: str, params: dict, shape: Sequence[int]) -> nn.Module:
    """Build ``NETWORKS[name]`` for data of ``shape`` (one example, no batch dimension).

    ``mlp`` takes ``dim`` from a shape ``(d,)``; ``unet`` takes ``in_channels`` and
    ``image_size`` from a shape ``(C, H, W)``. ``params`` are the remaining constructor
    arguments.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid: {', '.join(sorted(NETWORKS))}")
    shape = tuple(int(s) for s in shape)
    params = dict(params)
    if name == "mlp":
        if len(shape) != 1:
            raise ValueError(f"network 'mlp' needs data of shape (d,), but got shape={shape}")
        derived = {"dim": shape[0]}
    else:
        if len(shape) != 3:
            raise ValueError(f"network 'unet' needs data of shape (C, H, W), but got shape={shape}")
        derived = {"in_channels": shape[0], "image_size": max(shape[1], shape[2])}
    for key, value in derived.items():
        if key in params and params[key] != value:
            raise ValueError(
                f"{key} is set by the data shape {shape} to {value}, but params gave "
                f"{key}={params[key]!r}"
            )
    params.update(derived)
    return NETWORKS[name](**params)


NETWORKS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet}
