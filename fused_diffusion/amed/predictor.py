"""AMED's learned mean-direction predictor (Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models in
Around 5 Steps", sec. 3.2 and their code's `AMED_predictor`).

Each step of the student solver asks it for r in (0, 1), the position of the intermediate time
t_mid = t_next^r t^(1-r) whose direction best replaces the mean direction over the step, and optionally two scales
(of the direction and of the time given to the model). Its inputs are the positional embeddings of t and t_next and
the model's bottleneck feature from the step's call at (x, t): the mid block's output averaged over channels,
captured by a forward hook. A predictor without a bottleneck (`bottleneck_dim=0`) depends on the times only, which is
what models without a U-Net (the Gaussian mixture) get.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .. import files
from ..checks import check_bool, check_count, check_real

STUDENTS = ("amed", "ipndm")


def find_bottleneck(model: Any) -> nn.Module | None:
    """The mid block of the first diffusers U-Net inside `model` (e.g. an EpsDenoiser's inner U-Net), or None."""
    if not isinstance(model, nn.Module):
        return None
    for module in model.modules():
        mid = getattr(module, "mid_block", None)
        if isinstance(mid, nn.Module):
            return mid
    return None


def bottleneck_dim(model: Any, shape: tuple[int, ...], sigma: Tensor, extra_args: dict | None = None) -> int:
    """Values per sample of the U-Net's mid block output averaged over channels, the `bottleneck_dim` of a
    Predictor for `model`: one probe call on zeros of the batch `shape` (the size extra_args are made for) at the
    noise level `sigma` ([1]); 0 for a model without a U-Net."""
    mid = find_bottleneck(model)
    if mid is None:
        return 0
    seen = []
    hook = mid.register_forward_hook(lambda module, inputs, output: seen.append(
        (output[0] if isinstance(output, tuple) else output).shape))
    try:
        with torch.no_grad():
            model(torch.zeros(shape, device=sigma.device), sigma.reshape(1).expand(shape[0]), **(extra_args or {}))
    finally:
        hook.remove()
    if not seen:
        raise RuntimeError("the U-Net's mid block did not run in a call of the model")
    return math.prod(seen[-1][2:])


class PositionalEmbedding(nn.Module):
    """[cos(t f_k), sin(t f_k)] with f_k = (1 / max_positions)^(k / (n/2 - 1)) (the EDM/AMED code's, endpoint=True)."""

    def __init__(self, channels: int, max_positions: int = 10000):
        super().__init__()
        half = channels // 2
        freqs = (1 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        angles = t.to(self.freqs.dtype)[:, None] * self.freqs
        # [sin, cos]: the AMED code's order (it embeds [cos, sin], then swaps the halves)
        return torch.cat([angles.sin(), angles.cos()], dim=1)


def _edm_linear(in_features: int, out_features: int, init: str = "kaiming_normal") -> nn.Linear:
    """A linear layer initialised as the EDM/AMED code's Linear: weights kaiming-normal sqrt(1/fan_in) (or
    xavier-uniform), zero bias."""
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        if init == "xavier_uniform":
            bound = math.sqrt(6 / (in_features + out_features))
            layer.weight.uniform_(-bound, bound)
        else:
            layer.weight.normal_(0, math.sqrt(1 / in_features))
        layer.bias.zero_()
    return layer


class Predictor(nn.Module):
    """The AMED predictor network. Call protocol (the solvers'): `predictor(x, sigma[B], sigma_next[B], analytic)`
    -> (r, scale_dir, scale_time), each [B] (scales are 1.0 when their head is off). `analytic` says the step's
    direction came from AFS, not from a model call: the bottleneck input is then zero, as in the AMED code.

    scale_dir = s > 0 adds a head whose output lies in (1 - s, 1 + s) and scales the step's direction; scale_time
    likewise scales the time given to the model at the midpoint.

    What it was trained for travels with it: `sigmas` (the student's schedule), `student` ("amed" or "ipndm"),
    `afs`, `max_order` (iPNDM) and `info` (teacher, M, trajectories, loss). `sample` runs that student.
    """

    def __init__(self, bottleneck_dim: int = 0, hidden_dim: int = 128, bottleneck_out: int = 4,
                 noise_channels: int = 8, scale_dir: float = 0.0, scale_time: float = 0.0):
        super().__init__()
        # plain ints and floats (numpy numbers and 0-dim tensors too): the config is saved as JSON
        bottleneck_dim = check_count("bottleneck_dim", bottleneck_dim, minimum=0)
        hidden_dim = check_count("hidden_dim", hidden_dim)
        bottleneck_out = check_count("bottleneck_out", bottleneck_out, minimum=0)
        if bottleneck_out == 0 and bottleneck_dim:
            raise ValueError(f"bottleneck_out must be >= 1 for a predictor that reads a bottleneck (bottleneck_dim="
                             f"{bottleneck_dim}); a time-only predictor has bottleneck_dim=0")
        noise_channels = check_count("noise_channels", noise_channels, minimum=2)
        if noise_channels % 2:
            raise ValueError(f"noise_channels must be an even int >= 2, got {noise_channels!r}")
        scale_dir, scale_time = check_real("scale_dir", scale_dir), check_real("scale_time", scale_time)
        for name, value in (("scale_dir", scale_dir), ("scale_time", scale_time)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1) (the head's range is 1 +- {name}), got {value!r}")
        self.config = {"bottleneck_dim": bottleneck_dim, "hidden_dim": hidden_dim, "bottleneck_out": bottleneck_out,
                       "noise_channels": noise_channels, "scale_dir": float(scale_dir),
                       "scale_time": float(scale_time)}
        self.time_embedding = PositionalEmbedding(noise_channels)
        self.time_layer = _edm_linear(noise_channels, noise_channels, "xavier_uniform")
        features = 2 * noise_channels
        self.bottleneck_encoder = None
        if bottleneck_dim:
            self.bottleneck_encoder = nn.Sequential(
                _edm_linear(bottleneck_dim, hidden_dim), nn.SiLU(), _edm_linear(hidden_dim, bottleneck_out))
            features += bottleneck_out
        self.head_r = _edm_linear(features, 1)
        self.head_scale_dir = _edm_linear(features, 1) if scale_dir else None
        self.head_scale_time = _edm_linear(features, 1) if scale_time else None
        # what it was trained for (set by distill / load)
        self.sigmas: Tensor | None = None
        self.student, self.afs, self.max_order = "amed", True, 4
        self.info: dict[str, Any] = {}
        # the bottleneck feature of the model's latest call, until a step reads it
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._feature: Tensor | None = None

    # --- the bottleneck feature --------------------------------------------------------------------------------

    def attach(self, model: Any) -> "Predictor":
        """Hooks the mid block of the diffusers U-Net inside `model`, whose calls then feed this predictor.
        A time-only predictor needs no model; attaching again moves the hook."""
        if not self.config["bottleneck_dim"]:
            return self
        if isinstance(getattr(model, "denoiser", None), nn.Module) and not isinstance(model, nn.Module):
            raise TypeError(f"model must be the denoiser module, got a {type(model).__name__}: pass its .denoiser "
                            "(model, alphas_cumprod, shape = fd.zoo.digits(); predictor.attach(model))")
        mid = find_bottleneck(model)
        if mid is None:
            raise ValueError(f"this predictor reads a U-Net bottleneck (bottleneck_dim="
                             f"{self.config['bottleneck_dim']}) but {type(model).__name__} contains no module with a "
                             f"`mid_block` (a diffusers U-Net): attach it to the denoiser of the U-Net it was trained on (only a "
                             f"time-only Predictor(bottleneck_dim=0) needs none)")
        self.release()
        self._hook = mid.register_forward_hook(self._capture)
        return self

    def release(self) -> None:
        """Removes the hook from the model."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._feature = None

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        output = output[0] if isinstance(output, tuple) else output
        self._feature = output.detach().mean(dim=1).flatten(1)  # the AMED code's torch.mean(h, dim=1)

    def bottleneck(self, batch: int, analytic: bool) -> Tensor:
        """The [B, bottleneck_dim] input: the latest captured feature (the conditional half of a guided batch, the
        last B rows, as the AMED code), or zeros for an AFS step."""
        dim = self.config["bottleneck_dim"]
        weight = self.head_r.weight
        if analytic:
            self._feature = None
            return weight.new_zeros(batch, dim)
        feature, self._feature = self._feature, None
        if feature is None:
            attached = "no model is attached (predictor.attach(model))" if self._hook is None else (
                "the U-Net's mid block did not run in this step's call (is a feature such as DeepCache skipping it?)")
            raise RuntimeError(f"the AMED predictor has no bottleneck feature for this step: {attached}")
        if feature.shape[1] != dim:
            raise ValueError(f"the U-Net bottleneck has {feature.shape[1]} values per sample but this predictor was "
                             f"built for {dim} (another model or resolution?)")
        if feature.shape[0] % batch:
            raise ValueError(f"the bottleneck batch {feature.shape[0]} is not a multiple of the sample batch {batch}")
        return feature[-batch:].to(weight.dtype)

    # --- the network -------------------------------------------------------------------------------------------

    def forward(self, x: Tensor, sigma: Tensor, sigma_next: Tensor, analytic: bool = False
                ) -> tuple[Tensor, Tensor | float, Tensor | float]:
        dtype = self.head_r.weight.dtype
        times = [nn.functional.silu(self.time_layer(self.time_embedding(t.to(dtype)))) for t in (sigma, sigma_next)]
        if self.bottleneck_encoder is not None:
            times.insert(0, self.bottleneck_encoder(self.bottleneck(x.shape[0], analytic)))
        features = torch.cat(times, dim=1)
        r = torch.sigmoid(self.head_r(features))[:, 0]
        return r, self._scale(self.head_scale_dir, "scale_dir", features), \
            self._scale(self.head_scale_time, "scale_time", features)

    def _scale(self, head: nn.Linear | None, name: str, features: Tensor) -> Tensor | float:
        if head is None:
            return 1.0
        s = self.config[name]
        return torch.sigmoid(head(features))[:, 0] * (2 * s) + (1 - s)

    # --- what it was trained for -------------------------------------------------------------------------------

    def set_student(self, student: str, afs: bool, max_order: int) -> None:
        """The student solver this predictor is for: 'amed' or 'ipndm' (with its max_order), with AFS or not."""
        if not isinstance(student, str) or student not in STUDENTS:
            raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")
        if isinstance(max_order, bool) or max_order not in (1, 2, 3, 4):
            raise ValueError(f"max_order must be 1, 2, 3 or 4, got {max_order!r}")
        self.student, self.afs, self.max_order = student, check_bool("afs", afs), int(max_order)

    @property
    def calls(self) -> int:
        """Model calls of one run of its student over its schedule (which ends above 0)."""
        if self.sigmas is None:
            raise ValueError("this predictor has no schedule yet (train it with fd.amed.distill or load one)")
        return self.solver().calls(len(self.sigmas) - 1, to_zero=False)

    def solver(self):
        """The student solver using this predictor (for fd.Sampler(model, predictor.solver(), predictor.sigmas))."""
        from .. import solvers

        if self.student == "amed":
            return solvers.AMED(self, afs=self.afs)
        return solvers.get_solver("ipndm", max_order=self.max_order, afs=self.afs, predictor=self)

    def sample(self, model: Callable[..., Tensor], x: Tensor, denoise_to_zero: bool = False,
               extra_args: dict | None = None, disable: bool | None = True) -> Tensor:
        """Samples with the student over the schedule it was trained for; x is the noise scaled by sigmas[0].
        `denoise_to_zero` adds one call returning D(x, sigma_min). A U-Net predictor is attached to `model` first
        (it reads that model's bottleneck)."""
        from .. import solvers

        solvers.check_input(x)
        if self.sigmas is None:
            raise ValueError("this predictor has no schedule yet (train it with fd.amed.distill or load one)")
        sigmas = self.sigmas.to(x.device)
        self.attach(model)
        if check_bool("denoise_to_zero", denoise_to_zero):
            sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        return solvers.sample(self.solver(), model, x, sigmas, extra_args, disable=disable)

    def save(self, path: str | Path) -> None:
        """safetensors: the weights and the schedule, with the config and training facts as metadata."""
        if self.sigmas is None:
            raise ValueError("only a trained predictor (with its schedule) can be saved")
        files.save(path, {**self.state_dict(), "sigmas": self.sigmas.float()}, files.AMED_PREDICTOR,
                   config=self.config, student=self.student, afs=self.afs, max_order=self.max_order, info=self.info)

    @classmethod
    def load(cls, path: str | Path, model: Any = None) -> "Predictor":
        """A predictor written by `save`, attached to `model` when one is given (it must be, for a U-Net predictor,
        before sampling)."""
        tensors, metadata = files.read(path, files.AMED_PREDICTOR)
        try:
            predictor = cls(**metadata["config"])
            predictor.sigmas = tensors.pop("sigmas")
            predictor.load_state_dict(tensors)
            predictor.set_student(metadata["student"], metadata["afs"], metadata["max_order"])
        except (TypeError, ValueError, RuntimeError) as e:
            raise files.damaged(path, files.AMED_PREDICTOR, f"{type(e).__name__}: {e}") from None
        predictor.info = metadata.get("info", {})
        if model is not None:
            predictor.attach(model)
        return predictor.eval().requires_grad_(False)
