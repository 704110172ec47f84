"""fused_diffusion: fused-kernel, CUDA-graph-captured samplers for diffusion and flow models."""
from . import amed, analytic_dpm, consistency, metrics, pcm, sdo, shortcut, zoo
from .context import ModelCall, current_model_call, model_call
from .gmm import GaussianMixture
from .engine import Sampler
from . import integrations
from .integrations import from_diffusers
from .models import CFGDenoiser, EpsDenoiser, FlowDenoiser, VDenoiser
from .ops import backends
from .noise import BrownianTreeNoiseSampler, default_noise_sampler
from .sampling import (sample_amed, sample_consistency, sample_ddim, sample_dpm_2, sample_dpm_2_ancestral,
                       sample_dpm_adaptive, sample_dpm_fast, sample_dpmpp_2m, sample_dpmpp_2m_sde,
                       sample_dpmpp_2s_ancestral, sample_dpmpp_3m_sde, sample_dpmpp_sde, sample_euler,
                       sample_euler_ancestral, sample_heun, sample_ipndm, sample_lms, sample_pcm, sample_shortcut,
                       sample_unipc)
from .solvers.analytic_dpm_sampler import sample_analytic_dpm
from .schedules import (ddpm_alphas_cumprod, get_flow_times, get_sigmas_discrete, get_sigmas_exponential,
                        get_sigmas_karras, get_sigmas_logsnr, get_sigmas_polyexponential, get_sigmas_polynomial,
                        get_sigmas_time_uniform, get_sigmas_vp, img2img, sigmas_from_alphas_cumprod)


def __getattr__(name: str):
    # fd.unet imports diffusers: loaded on first use, so `import fused_diffusion` does not need it
    if name == "unet":
        import importlib

        return importlib.import_module(".unet", __name__)
    raise AttributeError(f"module 'fused_diffusion' has no attribute {name!r}")


# k-diffusion 0.1.1's 13 samplers, importable by their names
K_DIFFUSION_SAMPLERS = (
    "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2", "sample_dpm_2_ancestral", "sample_lms",
    "sample_dpm_fast", "sample_dpm_adaptive", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde", "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde",
)

__all__ = [
    "amed", "analytic_dpm", "BrownianTreeNoiseSampler", "consistency", "CFGDenoiser", "EpsDenoiser", "FlowDenoiser", "GaussianMixture",
    "K_DIFFUSION_SAMPLERS", "ModelCall", "Sampler", "VDenoiser", "backends", "current_model_call",
    "ddpm_alphas_cumprod", "default_noise_sampler", "from_diffusers", "get_flow_times", "get_sigmas_discrete", "get_sigmas_exponential",
    "get_sigmas_karras", "get_sigmas_logsnr", "get_sigmas_polyexponential", "get_sigmas_polynomial",
    "get_sigmas_time_uniform", "get_sigmas_vp", "img2img", "integrations", "metrics", "model_call", *K_DIFFUSION_SAMPLERS, "sample_amed",
    "sample_analytic_dpm", "sample_consistency", "sample_ddim", "sample_ipndm", "sample_pcm", "sample_shortcut",
    "sample_unipc", "sdo", "pcm",
    "shortcut",
    "sigmas_from_alphas_cumprod", "unet", "zoo",
]
