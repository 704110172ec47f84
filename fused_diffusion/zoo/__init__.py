"""Shipped models, loaded offline from safetensors inside the package: `fd.zoo.digits()`."""
from . import train
from .digits_unet import ZooModel, digits

__all__ = ["ZooModel", "digits", "train"]
