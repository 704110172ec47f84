"""Small random diffusers U-Nets covering every standard up block type, each as a denoiser with its extra
arguments, for the U-Net feature tests. Nothing here imports fused_diffusion.unet."""
from __future__ import annotations

import torch

import fused_diffusion as fd

KINDS = ["plain", "resnet_updown", "attn_resnet_updown", "score_sde", "sd", "simple_cross", "k_upscaler"]


def build(kind: str, seed: int = 0):
    """(unet, denoiser, extra_args, sample shape) for a U-Net of `kind`, random weights from `seed`."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    torch.manual_seed(seed)
    extra, shape = {}, (3, 16, 16)
    common = dict(sample_size=16, layers_per_block=1, norm_num_groups=8, attention_head_dim=8)
    if kind == "plain":
        unet = UNet2DModel(in_channels=3, out_channels=3, block_out_channels=(16, 32, 32),
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), **common)
    elif kind == "resnet_updown":
        unet = UNet2DModel(in_channels=3, out_channels=3, block_out_channels=(16, 32),
                           down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
                           resnet_time_scale_shift="scale_shift", **common)
    elif kind == "attn_resnet_updown":
        unet = UNet2DModel(in_channels=3, out_channels=3, block_out_channels=(16, 32),
                           down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
                           downsample_type="resnet", upsample_type="resnet", **common)
    elif kind == "score_sde":
        unet = UNet2DModel(in_channels=3, out_channels=3, block_out_channels=(32, 64),
                           down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
                           up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"), **common)
    else:
        shape = (4, 16, 16)
        extra = {"encoder_hidden_states": torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(seed))}
        cond = dict(in_channels=4, out_channels=4, cross_attention_dim=24, **common)
        if kind == "sd":
            unet = UNet2DConditionModel(block_out_channels=(16, 32, 32),
                                        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), **cond)
        elif kind == "simple_cross":
            unet = UNet2DConditionModel(block_out_channels=(16, 32),
                                        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                                        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                                        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
                                        resnet_time_scale_shift="scale_shift", **cond)
        elif kind == "k_upscaler":  # the block types of the SD x2 latent upscaler
            cond.update(layers_per_block=2, in_channels=4)
            unet = UNet2DConditionModel(block_out_channels=(32, 32, 64, 64),
                                        down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D",
                                                          "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"),
                                        up_block_types=("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D",
                                                        "KCrossAttnUpBlock2D", "KUpBlock2D"),
                                        mid_block_type=None, act_fn="gelu", time_embedding_type="fourier",
                                        timestep_post_act="gelu", conv_in_kernel=1, conv_out_kernel=1,
                                        resnet_time_scale_shift="scale_shift", **cond)
        else:
            raise ValueError(kind)
    unet.eval().requires_grad_(False)
    return unet, fd.EpsDenoiser(unet, fd.ddpm_alphas_cumprod()), extra, shape
