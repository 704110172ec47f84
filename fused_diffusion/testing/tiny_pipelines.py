"""Tiny random diffusers pipelines, built offline from configs (nothing is downloaded), seeded and fast on CPU.

Every pipeline denoises 8x8 latents (16x16 images through a two-level VAE, scale factor 2) and is given its prompts
as embeddings, so no tokenizer is ever built or called: the text encoders are tiny transformers models made from a
config where the pipeline's __init__ wants one, and None where it allows (SD3, Flux).

    components = sdxl_components()
    pipe = sdxl_pipeline(components)                       # a fresh scheduler of SDXL's config each time
    images = pipe(**sdxl_embeds(2), generator=..., output_type="pt", num_inference_steps=4).images

Builders of components are deterministic (seeded); pipelines built from the same components share their modules,
each with its own scheduler. `*_embeds(batch)` give the embedding arguments the pipeline's __call__ takes.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import diffusers
import torch
import transformers

IMAGE_SIZE = 16  # pixels; the VAEs below halve it: 8x8 latents
SEQUENCE = 5  # text tokens of the prompt embeddings


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _quiet_pipeline(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip_config(**options: Any) -> Any:
    return transformers.CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=100,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1, **options)


def _vae(latent_channels: int = 4, **options: Any) -> Any:
    """A two-level AutoencoderKL (scale factor 2): 16x16 images, 8x8 latents."""
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
        latent_channels=latent_channels, norm_num_groups=4, sample_size=IMAGE_SIZE, **options).eval()


def image(batch: int = 1, seed: int = 3) -> torch.Tensor:
    """An image batch in [0, 1] of the VAEs' size (img2img's `image`)."""
    return torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


# --- Stable Diffusion (txt2img, img2img) -------------------------------------------------------------------------

def sd_scheduler() -> Any:
    """Stable Diffusion's scheduler configuration (scaled-linear betas, steps_offset=1), as DDIM."""
    return diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def sd_components(seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4).eval()
    vae = _vae()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = transformers.CLIPTextModel(_clip_config()).eval()
    return dict(vae=vae, text_encoder=text, tokenizer=None, unet=unet, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def sd_pipeline(components: dict[str, Any], scheduler: Any = None) -> Any:
    return _quiet_pipeline(diffusers.StableDiffusionPipeline(scheduler=scheduler or sd_scheduler(), **components))


def sd_img2img_pipeline(components: dict[str, Any], scheduler: Any = None) -> Any:
    return _quiet_pipeline(diffusers.StableDiffusionImg2ImgPipeline(scheduler=scheduler or sd_scheduler(),
                                                                    **components))


def sd_embeds(batch: int = 2) -> dict[str, torch.Tensor]:
    return dict(prompt_embeds=_randn(batch, SEQUENCE, 16, seed=1),
                negative_prompt_embeds=_randn(1, SEQUENCE, 16, seed=2).expand(batch, SEQUENCE, 16))


# --- Stable Diffusion XL (base, img2img / refiner) ----------------------------------------------------------------

def sdxl_scheduler() -> Any:
    """SDXL's scheduler configuration: Euler, scaled-linear betas, leading spacing, steps_offset=1."""
    return diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            timestep_spacing="leading", steps_offset=1)


def sdxl_unet() -> Any:
    """addition_embed_type="text_time": 6 time ids of 4 channels plus the 16-channel pooled text embedding."""
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 16, cross_attention_dim=32,
        norm_num_groups=4).eval()


def sdxl_components(seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    unet = sdxl_unet()
    vae = _vae()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = transformers.CLIPTextModel(_clip_config()).eval()
        text_2 = transformers.CLIPTextModelWithProjection(_clip_config(projection_dim=16)).eval()
    return dict(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=None, tokenizer_2=None, unet=unet)


def refiner_components(components: dict[str, Any]) -> dict[str, Any]:
    """The base's components with a U-Net of its own (a refiner denoises with another network than the base)."""
    return {**components, "unet": copy.deepcopy(components["unet"])}


def sdxl_pipeline(components: dict[str, Any], scheduler: Any = None) -> Any:
    return _quiet_pipeline(diffusers.StableDiffusionXLPipeline(scheduler=scheduler or sdxl_scheduler(),
                                                               add_watermarker=False, **components))


def sdxl_img2img_pipeline(components: dict[str, Any], scheduler: Any = None) -> Any:
    return _quiet_pipeline(diffusers.StableDiffusionXLImg2ImgPipeline(
        scheduler=scheduler or sdxl_scheduler(), add_watermarker=False, requires_aesthetics_score=False,
        **components))


def sdxl_embeds(batch: int = 2) -> dict[str, torch.Tensor]:
    """Both encoders' hidden states concatenated (16 + 16 channels) and the second one's 16-channel projection."""
    return dict(prompt_embeds=_randn(batch, SEQUENCE, 32, seed=1), pooled_prompt_embeds=_randn(batch, 16, seed=2),
                negative_prompt_embeds=_randn(1, SEQUENCE, 32, seed=3).expand(batch, SEQUENCE, 32),
                negative_pooled_prompt_embeds=_randn(1, 16, seed=4).expand(batch, 16))


# --- Stable Diffusion 3 ------------------------------------------------------------------------------------------

def sd3_scheduler() -> Any:
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)


def sd3_components(seed: int = 0) -> dict[str, Any]:
    """A one-layer SD3Transformer2DModel (patch 2: 16 tokens), no text encoders or tokenizers (the prompts come as
    prompt_embeds / pooled_prompt_embeds and their negatives)."""
    torch.manual_seed(seed)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=16).eval()
    vae = _vae(4, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    return dict(transformer=transformer, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)


def sd3_pipeline(components: dict[str, Any], scheduler: Any = None) -> Any:
    return _quiet_pipeline(diffusers.StableDiffusion3Pipeline(scheduler=scheduler or sd3_scheduler(), **components))


def sd3_embeds(batch: int = 1) -> dict[str, torch.Tensor]:
    return dict(prompt_embeds=_randn(batch, SEQUENCE, 32, seed=1), pooled_prompt_embeds=_randn(batch, 32, seed=2),
                negative_prompt_embeds=_randn(batch, SEQUENCE, 32, seed=3),
                negative_pooled_prompt_embeds=_randn(batch, 32, seed=4))


# --- Flux --------------------------------------------------------------------------------------------------------

def flux_scheduler() -> Any:
    """FLUX.1-dev's scheduler configuration: dynamic shifting between image sequence lengths 256 and 4096."""
    return diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096)


def flux_components(seed: int = 0) -> dict[str, Any]:
    """A FluxTransformer2DModel with guidance_embeds (one double and one single block) on 4-channel latents packed
    in 2x2 patches (16 channels; 8x8 latents are 16 tokens); no text encoders or tokenizers."""
    torch.manual_seed(seed)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8)).eval()
    vae = _vae(4, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    return dict(transformer=transformer, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                tokenizer_2=None)


def flux_pipeline(components: dict[str, Any], scheduler: Any = None) -> Any:
    return _quiet_pipeline(diffusers.FluxPipeline(scheduler=scheduler or flux_scheduler(), **components))


def flux_embeds(batch: int = 1, negative: bool = False) -> dict[str, torch.Tensor]:
    """prompt_embeds (the T5 states) and pooled_prompt_embeds (CLIP's); with `negative`, their negatives (true
    CFG). Flux's call needs height / width: pass IMAGE_SIZE (its default is 1024 pixels)."""
    embeds = dict(prompt_embeds=_randn(batch, SEQUENCE, 32, seed=1), pooled_prompt_embeds=_randn(batch, 32, seed=2))
    if negative:
        embeds.update(negative_prompt_embeds=_randn(batch, SEQUENCE, 32, seed=3),
                      negative_pooled_prompt_embeds=_randn(batch, 32, seed=4))
    return embeds
