"""fused_diffusion: fused-kernel, CUDA-graph-captured samplers for diffusion and flow models."""
from . import amed, metrics, zoo
from .context import ModelCall, current_model_call, model_call
from .gmm import GaussianMixture
from .engine import Sampler
from .models import CFGDenoiser, EpsDenoiser, FlowDenoiser, VDenoiser
from .ops import backends
from .sampling import (sample_amed, sample_consistency, sample_ddim, sample_dpm_2, sample_dpmpp_2m, sample_euler,
                       sample_euler_ancestral, sample_heun, sample_ipndm, sample_shortcut)
from .schedules import (ddpm_alphas_cumprod, get_flow_times, get_sigmas_discrete, get_sigmas_exponential,
                        get_sigmas_karras, get_sigmas_logsnr, get_sigmas_polynomial, get_sigmas_time_uniform,
                        get_sigmas_vp, sigmas_from_alphas_cumprod)


def __getattr__(name: str):
    # fd.unet imports diffusers: loaded on first use, so `import fused_diffusion` does not need it
    if name == "unet":
        import importlib

        return importlib.import_module(".unet", __name__)
    raise AttributeError(f"module 'fused_diffusion' has no attribute {name!r}")


__all__ = [
    "amed", "CFGDenoiser", "EpsDenoiser", "FlowDenoiser", "GaussianMixture", "ModelCall", "Sampler", "VDenoiser",
    "backends", "current_model_call", "ddpm_alphas_cumprod", "get_flow_times", "get_sigmas_discrete",
    "get_sigmas_exponential", "get_sigmas_karras", "get_sigmas_logsnr", "get_sigmas_polynomial",
    "get_sigmas_time_uniform", "get_sigmas_vp", "metrics", "model_call", "sample_amed", "sample_consistency",
    "sample_ddim", "sample_dpm_2", "sample_dpmpp_2m", "sample_euler", "sample_euler_ancestral", "sample_heun",
    "sample_ipndm", "sample_shortcut", "sigmas_from_alphas_cumprod", "unet", "zoo",
]
