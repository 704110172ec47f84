"""Shipped models, loaded offline from safetensors inside the package: `fd.zoo.digits()`, its AMED predictors
`fd.zoo.digits_amed(denoiser)` and the shortcut model `fd.zoo.digits_shortcut()`."""
from . import train
from .digits_amed import digits_amed
from .digits_shortcut import ShortcutZooModel, digits_shortcut
from .digits_unet import ZooModel, digits

__all__ = ["ShortcutZooModel", "ZooModel", "digits", "digits_amed", "digits_shortcut", "train"]
