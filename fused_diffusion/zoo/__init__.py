"""Shipped models, loaded offline from safetensors inside the package: `fd.zoo.digits()` and its AMED predictors
`fd.zoo.digits_amed(denoiser)`."""
from . import train
from .digits_amed import digits_amed
from .digits_unet import ZooModel, digits

__all__ = ["ZooModel", "digits", "digits_amed", "train"]
