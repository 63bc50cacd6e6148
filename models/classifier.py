"""The noisy ImageNet classifier: the UNet's encoder half with attention pooling."""

from __future__ import annotations

import torch
from torch import nn

from .config import ClassifierConfig
from .nn import AttentionPool2d, convert_convs, normalization, timestep_embedding
from .unet import build_encoder_blocks, time_embedding_mlp


class EncoderUNetModel(nn.Module):
    """Classifier logits p(y | x_t): [N x C x H x W], timesteps [N] -> [N x out_channels]."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        ted = c.model_channels * 4
        self.time_embed = time_embedding_mlp(c.model_channels, ted)
        self.input_blocks, self.middle_block, _, ch, ds = build_encoder_blocks(
            model_channels=c.model_channels, in_channels=c.in_channels, channel_mult=c.channel_mult,
            num_res_blocks=c.num_res_blocks, attention_ds=c.attention_ds, time_embed_dim=ted,
            dropout=0.0, num_heads=1, num_head_channels=c.num_head_channels,
            use_scale_shift_norm=c.use_scale_shift_norm, resblock_updown=c.resblock_updown,
            use_new_attention_order=False)
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(),
            AttentionPool2d(c.image_size // ds, ch, c.num_head_channels, c.out_channels))

    def convert_to_fp16(self) -> "EncoderUNetModel":
        """The reference's `classifier_use_fp16`: the convolutions of the input and middle blocks
        in float16; the time embedding, GroupNorms and the attention-pool head stay float32."""
        return self.convert_torso(torch.float16)

    def convert_torso(self, dtype: torch.dtype) -> "EncoderUNetModel":
        for blocks in (self.input_blocks, self.middle_block):
            convert_convs(blocks, dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The torso's dtype (input and middle blocks)."""
        return self.input_blocks[0][0].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels)
                              .to(self.time_embed[0].weight.dtype))
        h = x.to(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb)
        return self.out(h.to(self.out[0].weight.dtype)).to(x.dtype)
