"""Building blocks of the ADM UNet ("Diffusion Models Beat GANs").

Attribute names follow the reference layout exactly (`in_layers`, `emb_layers`, `out_layers`,
`skip_connection`, `qkv`, `proj_out`, ...): the official checkpoints are state dicts keyed by
those names and must load with a strict key match.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the activations' dtype (as the reference does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


def convert_convs(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the weight and bias of every Conv1d/2d/3d inside `module` to `dtype`, nothing else
    (the reference's `convert_module_to_f16` applied to a subtree)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            layer.to(dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding [N] -> [N x dim]: cosines first, then sines."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepBlock(nn.Module):
    """A module whose forward also takes the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the embedding to the children that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 conv (key `conv`)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling: a strided 3x3 conv or, without parameters, 2x2 average pooling (key `op`)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling (`up`/`down`)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, *,
                 out_channels: int | None = None, use_scale_shift_norm: bool = False,
                 up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            # Resample between the norm/activation and the conv, as the reference does.
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


ATTENTION_KERNELS = ("auto", "sdpa", "matmul")


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """Softmax attention over [B*heads x ch x T] tensors, returning [B*heads x ch x T].

    The scale 1/sqrt(ch) is the reference's 1/ch**0.25 applied to q and to k. `auto`: on GPUs the
    fused scaled_dot_product_attention kernels win; on CPUs two batched matmuls and a softmax
    measured faster (bench/attention numbers in docs/performance.md), with bit-identical golden
    outputs. `sdpa` and `matmul` force one (bench.gpu compares them on the device at hand).
    """
    if kernel == "sdpa" or (kernel == "auto" and q.device.type != "cpu"):
        # [B*heads x 1 x T x ch], contiguous: the fused kernels (flash, memory-efficient, cuDNN)
        # take only 4-dimensional inputs whose last dimension has stride 1. The 3-dimensional
        # transposed views passed before sent every pass to the slow math kernel (profiled on an
        # H200: 12.8 of 196 ms, slower than the batched matmuls below).
        q, k, v = (z.transpose(1, 2).contiguous().unsqueeze(1) for z in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2)
    weight = torch.bmm(q.transpose(1, 2) * (q.shape[1] ** -0.5), k)
    weight = torch.softmax(weight.float(), dim=-1).to(v.dtype)
    return torch.bmm(v, weight.transpose(1, 2))


def set_attention_kernel(module: nn.Module, kernel: str) -> nn.Module:
    """Every QKVAttention in `module` uses `kernel` (one of ATTENTION_KERNELS)."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {ATTENTION_KERNELS}, not {kernel!r}")
    for m in module.modules():
        if isinstance(m, QKVAttention):
            m.kernel = kernel
    return module


class QKVAttention(nn.Module):
    """Multi-head attention over a fused [N x 3*C x T] qkv tensor.

    `legacy_order=True` (the reference's default) reads the channels per head as (q, k, v);
    False ("new attention order") reads them as (all q, all k, all v). No parameters.
    """

    def __init__(self, n_heads: int, *, legacy_order: bool = True):
        super().__init__()
        self.n_heads = n_heads
        self.legacy_order = legacy_order
        self.kernel = "auto"  # set_attention_kernel

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        if self.legacy_order:
            q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
        else:
            q, k, v = (part.reshape(bs * self.n_heads, ch, length) for part in qkv.chunk(3, dim=1))
        return _attention(q, k, v, self.kernel).reshape(bs, -1, length)


def heads_for(channels: int, num_heads: int, num_head_channels: int) -> int:
    """`num_head_channels`, when set, overrides `num_heads` (heads = channels / head width)."""
    return num_heads if num_head_channels == -1 else channels // num_head_channels


def pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 Conv1d over [N x C x T] as one matmul: the conv kernels' small-input path is slower."""
    return torch.matmul(conv.weight[:, :, 0], x) + conv.bias[:, None]


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection; projections are 1-D convolutions."""

    def __init__(self, channels: int, *, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        self.num_heads = heads_for(channels, num_heads, num_head_channels)
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads, legacy_order=not use_new_attention_order)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = pointwise(self.proj_out, self.attention(pointwise(self.qkv, self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends over all positions."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.attention = QKVAttention(embed_dim // num_heads_channels, legacy_order=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = pointwise(self.c_proj, self.attention(pointwise(self.qkv_proj, x)))
        return x[:, :, 0]
