"""AMED's learned predictor and its distillation (Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models
in Around 5 Steps"): `Predictor`, `distill`, `schedule`, `load`.

    >>> denoiser, _, shape = fd.zoo.digits()
    >>> sigmas = fd.amed.schedule(5, denoiser.sigma_min, denoiser.sigma_max)   # 3 AMED steps, AFS: 5 calls
    >>> predictor = fd.amed.distill(denoiser, sigmas, shape)                   # minutes on a CPU
    >>> images = predictor.sample(denoiser, torch.randn(16, *shape) * sigmas[0])
"""
from .distill import distill, refine, schedule
from .predictor import Predictor, bottleneck_dim, find_bottleneck

load = Predictor.load

__all__ = ["Predictor", "bottleneck_dim", "distill", "find_bottleneck", "load", "refine", "schedule"]
