"""Argument checks shared by the package: each returns the value in its checked form, or raises naming the argument,
what it expected and what it got."""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor


def describe(value: object) -> str:
    """A short description of an argument for an error message: its value and type, or a tensor's shape and dtype."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """An integer argument >= minimum as an int (numpy integers fine; bool refused: True is no count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_bool(name: str, value: object) -> bool:
    """A flag: a bool (numpy's too); a string such as 'no' or a number would be read as its truth value."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return bool(value)


def check_callable(name: str, value: object, form: str, arity: int) -> Any:
    """A callable that can be called as `form` with `arity` positional arguments (checked on its signature when it
    has one), so a wrong one fails here with its name instead of inside a loop."""
    if not callable(value):
        raise TypeError(f"{name} must be callable as {form}, got {describe(value)}")
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return value  # builtins and some C callables have no signature: let the call speak
    try:
        signature.bind(*[None] * arity)
    except TypeError as e:
        label = getattr(value, "__name__", type(value).__name__)
        raise TypeError(f"{name} must be callable as {form}; {label}{signature} cannot ({e})") from None
    return value


def _is_real(value: object) -> bool:
    if isinstance(value, Tensor):
        return value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(name: str, value: object, above: float | None = None, at_least: float | None = None,
               below: float | None = None, allow_inf: bool = False) -> float:
    """A real argument as a float (Python and numpy numbers, 0-dim tensors), finite unless `allow_inf` (never NaN),
    optionally > `above`, >= `at_least`, < `below`. Read on the host once, before any work."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {describe(value)}")
    number = float(value)  # sync-ok: an argument, read once up front
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise ValueError(f"{name} must be {'a number' if allow_inf else 'finite'}, got {number}")
    if above is not None and not number > above:
        raise ValueError(f"{name} must be > {above}, got {number}")
    if at_least is not None and not number >= at_least:
        raise ValueError(f"{name} must be >= {at_least}, got {number}")
    if below is not None and not number < below:
        raise ValueError(f"{name} must be < {below}, got {number}")
    return number


def check_device(device: object) -> torch.device:
    """A device argument as a torch.device: a torch.device, a string such as "cuda:0", or a device index."""
    if isinstance(device, bool) or not isinstance(device, (torch.device, str, int)):
        raise TypeError(f"device must be a torch.device, a device string or an index, got {describe(device)}")
    try:
        parsed = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device must name a torch device, got {device!r} ({e})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} needs a CUDA GPU and torch sees none (torch.cuda.is_available() is "
                         "False); use 'cpu'")
    return parsed


def check_has_data(name: str, value: Tensor) -> None:
    if value.device.type == "meta":
        raise ValueError(f"{name} must hold data, got a tensor on the meta device")


def check_eta(eta: object, ddim: bool = False) -> float:
    """A noise amount eta >= 0 (0: the deterministic solver). `ddim`: DDIM's eta (and Analytic-DPM's on the DDIM
    trajectory), in [0, 1]: std = eta * the DDPM posterior std, and above 1 the direction coefficient
    sqrt(1 - a_prev - std^2) has no real value (diffusers gives NaN)."""
    eta = check_real("eta", eta, at_least=0)
    if ddim and eta > 1:
        raise ValueError(f"eta must be in [0, 1] (DDIM's std = eta * the DDPM posterior std), got {eta}")
    return eta
