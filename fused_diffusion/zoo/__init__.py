"""Shipped models, loaded offline from safetensors inside the package: `fd.zoo.digits()`, its AMED predictors
`fd.zoo.digits_amed(denoiser)`, the shortcut model `fd.zoo.digits_shortcut()` and the few-step students distilled
from it, `fd.zoo.digits_consistency()` and `fd.zoo.digits_pcm()`; and `fd.zoo.methods()`, every way the library samples the
digits model (the baseline solvers and each faster method it ships), which the demo and the few-step bench read."""
from . import train
from .digits_amed import digits_amed
from .digits_consistency import ConsistencyZooModel, PCMZooModel, digits_consistency, digits_pcm
from .digits_shortcut import ShortcutZooModel, digits_shortcut
from .digits_unet import ZooModel, digits
from .sampling_methods import Method, methods

__all__ = ["ConsistencyZooModel", "Method", "PCMZooModel", "ShortcutZooModel", "ZooModel", "digits", "digits_amed",
           "digits_consistency", "digits_pcm", "digits_shortcut", "methods", "train"]
