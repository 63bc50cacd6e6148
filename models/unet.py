"""The ADM UNet with learned variance, as in the official RePaint checkpoints."""

from __future__ import annotations

import torch
from torch import nn

from .config import UNetConfig
from .nn import (AttentionBlock, Downsample, ResBlock, TimestepEmbedSequential, Upsample,
                 convert_convs, normalization, timestep_embedding)


def build_encoder_blocks(*, model_channels: int, in_channels: int, channel_mult, num_res_blocks: int,
                         attention_ds, time_embed_dim: int, dropout: float, num_heads: int,
                         num_head_channels: int, use_scale_shift_norm: bool, resblock_updown: bool,
                         use_new_attention_order: bool):
    """The downsampling half and the middle block, shared by the UNet and the classifier.

    Returns (input_blocks, middle_block, skip_channels, channels, ds): the channel count of every
    input block's output (the skips the decoder consumes), and the final width and downsampling.
    """
    ch = int(channel_mult[0] * model_channels)
    input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    skip_channels = [ch]
    ds = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            out_ch = int(mult * model_channels)
            layers: list[nn.Module] = [ResBlock(ch, time_embed_dim, dropout, out_channels=out_ch,
                                                use_scale_shift_norm=use_scale_shift_norm)]
            ch = out_ch
            if ds in attention_ds:
                layers.append(AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels,
                                             use_new_attention_order=use_new_attention_order))
            input_blocks.append(TimestepEmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            down = (ResBlock(ch, time_embed_dim, dropout, out_channels=ch,
                             use_scale_shift_norm=use_scale_shift_norm, down=True)
                    if resblock_updown else Downsample(ch, True, out_channels=ch))
            input_blocks.append(TimestepEmbedSequential(down))
            skip_channels.append(ch)
            ds *= 2
    middle_block = TimestepEmbedSequential(
        ResBlock(ch, time_embed_dim, dropout, use_scale_shift_norm=use_scale_shift_norm),
        AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels,
                       use_new_attention_order=use_new_attention_order),
        ResBlock(ch, time_embed_dim, dropout, use_scale_shift_norm=use_scale_shift_norm),
    )
    return input_blocks, middle_block, skip_channels, ch, ds


def time_embedding_mlp(model_channels: int, time_embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                         nn.Linear(time_embed_dim, time_embed_dim))


class UNetModel(nn.Module):
    """Noise predictor eps(x_t, t[, y]): [N x C x H x W] -> [N x out_channels x H x W].

    With learned variance the output has 6 channels: epsilon, then the variance interpolation.
    Timesteps are on the original (un-respaced) scale; the output is returned in the input's dtype.
    Parameters are float32; or half precision as the reference runs it (`convert_to_fp16`: the
    torso's convolutions in float16, the rest float32); or all of one dtype (`.to(torch.bfloat16)`).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        ted = c.time_embed_dim
        self.time_embed = time_embedding_mlp(c.model_channels, ted)
        if c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes, ted)
        self.input_blocks, self.middle_block, skips, ch, ds = build_encoder_blocks(
            model_channels=c.model_channels, in_channels=c.in_channels, channel_mult=c.channel_mult,
            num_res_blocks=c.num_res_blocks, attention_ds=c.attention_ds, time_embed_dim=ted,
            dropout=c.dropout, num_heads=c.num_heads, num_head_channels=c.num_head_channels,
            use_scale_shift_norm=c.use_scale_shift_norm, resblock_updown=c.resblock_updown,
            use_new_attention_order=c.use_new_attention_order)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                out_ch = int(mult * c.model_channels)
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), ted, c.dropout, out_channels=out_ch,
                                                    use_scale_shift_norm=c.use_scale_shift_norm)]
                ch = out_ch
                if ds in c.attention_ds:
                    layers.append(AttentionBlock(ch, num_heads=c.num_heads_upsample,
                                                 num_head_channels=c.num_head_channels,
                                                 use_new_attention_order=c.use_new_attention_order))
                if level and i == c.num_res_blocks:
                    layers.append(ResBlock(ch, ted, c.dropout, out_channels=ch,
                                           use_scale_shift_norm=c.use_scale_shift_norm, up=True)
                                  if c.resblock_updown else Upsample(ch, True, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def convert_to_fp16(self) -> "UNetModel":
        """Half precision as the reference's `use_fp16` does it: the weights and biases of every
        convolution in the torso (input, middle and output blocks) become float16; the timestep
        and label embeddings, the ResBlocks' embedding projections, every GroupNorm and the
        output head stay float32. Call it after loading the weights."""
        return self.convert_torso(torch.float16)

    def convert_torso(self, dtype: torch.dtype) -> "UNetModel":
        """The torso's convolutions to `dtype` (float32 undoes `convert_to_fp16`)."""
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            convert_convs(blocks, dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The torso's dtype: what the activations between the blocks are computed in."""
        return self.input_blocks[0][0].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        assert x.ndim == 4 and timesteps.shape == (x.shape[0],), (x.shape, timesteps.shape)
        if (y is not None) != (self.config.num_classes is not None):
            raise ValueError("class labels y must be given exactly when the model is class-conditional")
        # The embedding in the MLP's own dtype (float32 unless the whole module was cast); the
        # ResBlocks cast their projection of it to the torso's dtype.
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels)
                              .to(self.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(self.out[-1].weight.dtype)).to(x.dtype)
