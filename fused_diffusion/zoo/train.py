"""Training of the shipped digits U-Nets (`python -m fused_diffusion train digits | digits-shortcut | digits-flow |
digits-consistency | digits-pcm`): the DDPM epsilon loss, the shortcut objective or plain flow matching
(`fd.shortcut.loss`), or a few-step student distilled from the shipped digits model (`fd.consistency.loss`,
`fd.pcm.loss`: the student starts as a copy of the teacher, its target network is an EMA of it); AdamW with warm-up
and cosine decay, EMA weights, seeded, resumable from a checkpoint in the work directory."""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import consistency, files, pcm, shortcut
from ..models import EpsDenoiser
from ..schedules import ddpm_alphas_cumprod
from .data import load_digits_split
from .digits_unet import DIGITS_WEIGHTS, SCHEDULE, build_unet, digits, unet_config
from .store import WEIGHTS_DIR

# objective -> the file it ships as
WEIGHTS = {"ddpm": DIGITS_WEIGHTS, "shortcut": WEIGHTS_DIR / "digits_shortcut.safetensors",
           "flow": WEIGHTS_DIR / "digits_flow.safetensors",
           "consistency": WEIGHTS_DIR / "digits_consistency.safetensors",
           "pcm": WEIGHTS_DIR / "digits_pcm.safetensors"}
UNET_KINDS = {"ddpm": files.DIGITS_UNET, "shortcut": files.SHORTCUT_UNET, "flow": files.FLOW_UNET,
              "consistency": files.CONSISTENCY_UNET, "pcm": files.PCM_UNET}
DISTILLED = ("consistency", "pcm")  # objectives whose student is distilled from the shipped digits model
# a student starting from its teacher's weights takes smaller steps than a network trained from scratch; sized so
# each run takes at most 60 minutes on one CPU thread (a CD iteration makes 3 forward passes and a backward one).
# CD ships with N = 10, mu = 0 and the pseudo-Huber distance (improved consistency training's choices): in this
# short budget they learned the one-step map faster than the paper's N = 18, mu = 0.95, and pseudo-Huber than l2
# (docs/few-step.md, consistency models)
DISTILL_DEFAULTS = {"consistency": {"lr": 4e-4, "warmup": 200, "iterations": 8000, "batch_size": 64, "scales": 10,
                                    "target_ema": 0.0, "distance": "pseudo_huber"},
                    "pcm": {"lr": 1e-4, "warmup": 200, "iterations": 2500, "batch_size": 128}}


@dataclass
class TrainConfig:
    objective: str = "ddpm"  # "ddpm" (epsilon loss), "shortcut" (fd.shortcut.loss), "flow" (its flow part only),
    # "consistency" (fd.consistency.loss) or "pcm" (fd.pcm.loss)
    resolution: int = 8
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    iterations: int = 12000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 500
    ema_decay: float = 0.9995
    seed: int = 0
    max_minutes: float | None = None  # stop early (checkpoint + export) once this much wall time has passed
    checkpoint_every: int = 500
    workdir: Path = Path("runs/digits")
    out: Path | None = None  # default: the shipped file of the objective (WEIGHTS)
    threads: int | None = None
    extra: dict = field(default_factory=dict)
    # distillation (objectives "consistency" and "pcm")
    target_ema: float | None = None  # mu of the target network; default 0.95 for CD (the paper), 0 for PCM (its code)
    scales: int = 18  # CD: N of the Karras discretisation (the paper's CIFAR-10 choice)
    phases: int = 4  # PCM: M
    distance: str = "l2"  # "l2" or "pseudo_huber"

    @classmethod
    def for_objective(cls, objective: str, **given) -> "TrainConfig":
        """A config whose unset values are the objective's defaults (DISTILL_DEFAULTS for a distilled student)."""
        return cls(objective=objective, **{**DISTILL_DEFAULTS.get(objective, {}), **given})


def _checkpoint(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupted save never corrupts the last checkpoint


class CheckpointError(ValueError):
    """A work directory's checkpoint that this run cannot resume from."""


def read_checkpoint(path: Path, objective: str, unet: torch.nn.Module) -> dict:
    """The training state in `path`, if it is a checkpoint of this objective and U-Net; else an error naming the
    work directory (another model's checkpoint would fail inside load_state_dict, or resume the wrong objective)."""
    try:
        state = torch.load(path, weights_only=False)
        shapes = {k: tuple(v.shape) for k, v in state["unet"].items()}
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a damaged or foreign file
        raise CheckpointError(f"{path} is not a readable training checkpoint ({type(e).__name__}: {e}); delete it or "
                         "choose another --workdir") from None
    found = state.get("objective", objective)  # checkpoints from before the objective was recorded: by shapes only
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    if found != objective or shapes != expected:
        what = f"objective {found!r}" if found != objective else "a U-Net of another configuration"
        raise CheckpointError(f"{path} is a checkpoint of {what}, not of this run (objective {objective!r}); resume with "
                         "the settings it was made with, or choose another --workdir")
    return state


class Distillation:
    """A distilled student's side of the loop: the frozen shipped digits model as teacher, the target network
    (an EMA of the student, theta^- <- mu theta^- + (1 - mu) theta after each step; mu = 0 is the student itself)
    and the objective's loss on a batch of data."""

    def __init__(self, cfg: TrainConfig, student: torch.nn.Module):
        teacher = digits()
        self.cfg, self.alphas_cumprod, self.teacher = cfg, teacher.alphas_cumprod, teacher.denoiser
        student.load_state_dict(self.teacher.inner_model.state_dict())  # the paper's initialisation
        self.mu = cfg.target_ema if cfg.target_ema is not None else {"consistency": 0.95, "pcm": 0.0}[cfg.objective]
        self.student = student
        self.target = student if self.mu == 0 else copy.deepcopy(student).requires_grad_(False)
        if cfg.objective == "consistency":
            self.sigma_min, self.sigma_max = self.teacher.sigma_min, self.teacher.sigma_max
            self.student_f = self.consistency_function(student)
            self.target_f = self.consistency_function(self.target)
        self.teacher_calls_per_sample = {"consistency": 2, "pcm": 1}[cfg.objective]  # Heun: 2; DDIM: 1

    def consistency_function(self, unet: torch.nn.Module) -> consistency.ConsistencyFunction:
        return consistency.ConsistencyFunction(EpsDenoiser(unet, self.alphas_cumprod), self.sigma_min)

    def loss(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.cfg.objective == "consistency":
            return consistency.loss(self.student_f, self.target_f, self.teacher, batch, sigma_min=self.sigma_min,
                                    sigma_max=self.sigma_max, scales=self.cfg.scales, distance=self.cfg.distance,
                                    generator=generator)
        return pcm.loss(self.student, self.target, self.teacher.inner_model, batch, self.alphas_cumprod,
                        phases=self.cfg.phases, distance=self.cfg.distance, generator=generator)

    @torch.no_grad()
    def update_target(self) -> None:
        if self.target is not self.student:
            for target, online in zip(self.target.parameters(), self.student.parameters()):
                target.lerp_(online, 1 - self.mu)

    def metadata(self) -> dict:
        """What a loader needs besides the U-Net: the consistency function's sigmas or the phases."""
        if self.cfg.objective == "consistency":
            return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "sigma_data": consistency.SIGMA_DATA,
                    "scales": self.cfg.scales, "target_ema": self.mu, "distance": self.cfg.distance}
        return {"phases": self.cfg.phases, "ddim_steps": pcm.DDIM_STEPS, "target_ema": self.mu,
                "distance": self.cfg.distance}


def train_digits(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Trains (or resumes) and writes the EMA weights to cfg.out; returns that path."""
    if cfg.objective not in WEIGHTS:
        raise ValueError(f"objective must be one of {sorted(WEIGHTS)}, got {cfg.objective!r}")
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    images = load_digits_split(cfg.resolution).train_images
    config = unet_config(cfg.resolution, cfg.channels, cfg.layers_per_block)
    if cfg.objective in ("shortcut", "flow"):
        config = shortcut.ShortcutUNet.unet_config(config)
    unet = build_unet(config).train()
    distillation = Distillation(cfg, unet) if cfg.objective in DISTILLED else None
    if cfg.objective in ("shortcut", "flow"):
        velocity = shortcut.ShortcutUNet(unet, step_conditioned=cfg.objective == "shortcut")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, cfg.warmup, cfg.iterations)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
    alphas_cumprod = ddpm_alphas_cumprod(**SCHEDULE)
    step, elapsed = 0, 0.0

    cfg.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = cfg.workdir / "checkpoint.pt"
    if resume and checkpoint.is_file():
        state = read_checkpoint(checkpoint, cfg.objective, unet)
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        ema.load_state_dict(state["ema"])
        if distillation is not None and distillation.target is not unet:
            distillation.target.load_state_dict(state["target"])
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["generator"])
        step, elapsed = state["step"], state["elapsed"]
    (cfg.workdir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), default=str, indent=2))

    def save() -> None:
        _checkpoint(checkpoint, unet=unet.state_dict(), optimizer=optimizer.state_dict(),
                    lr_schedule=lr_schedule.state_dict(), ema=ema.state_dict(), torch_rng=torch.get_rng_state(),
                    generator=generator.get_state(), step=step, elapsed=elapsed, objective=cfg.objective,
                    target=None if distillation is None else distillation.target.state_dict())

    start = time.perf_counter() - elapsed
    bar = tqdm(total=cfg.iterations, initial=step, desc=f"digits U-Net ({cfg.objective})", unit="it",
               disable=not progress)
    smoothed = None
    while step < cfg.iterations:
        batch = images[torch.randint(len(images), (cfg.batch_size,), generator=generator)]
        if cfg.objective == "ddpm":
            t = torch.randint(len(alphas_cumprod), (cfg.batch_size,), generator=generator)
            noise = torch.randn(batch.shape, generator=generator)  # after t: the shipped model's random stream
            a = alphas_cumprod[t].view(-1, 1, 1, 1)
            loss = F.mse_loss(unet(a.sqrt() * batch + (1 - a).sqrt() * noise, t).sample, noise)
        elif distillation is not None:
            loss = distillation.loss(batch, generator)
        else:
            loss = shortcut.loss(velocity, batch, torch.randn(batch.shape, generator=generator), generator=generator,
                                 bootstrap_fraction=0.25 if cfg.objective == "shortcut" else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
        if distillation is not None:
            distillation.update_target()
        step += 1
        elapsed = time.perf_counter() - start
        smoothed = loss.item() if smoothed is None else 0.99 * smoothed + 0.01 * loss.item()
        bar.update()
        bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
        out_of_time = cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes
        if step % cfg.checkpoint_every == 0 or step == cfg.iterations or out_of_time:
            save()
        if out_of_time:
            break
    bar.close()

    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    info = {"iterations": step, "train_minutes": round(elapsed / 60, 2), "seed": cfg.seed,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "ema_decay": cfg.ema_decay,
            "torch": torch.__version__, "threads": torch.get_num_threads(), **cfg.extra}
    extra_metadata = {}
    if distillation is not None:
        info["teacher_calls"] = step * cfg.batch_size * distillation.teacher_calls_per_sample
        info["lr_warmup"] = cfg.warmup
        extra_metadata["distillation"] = distillation.metadata()
    out = cfg.out or WEIGHTS[cfg.objective]
    out.parent.mkdir(parents=True, exist_ok=True)
    files.save(out, unet.state_dict(), UNET_KINDS[cfg.objective], config=config, schedule=SCHEDULE,
               objective=cfg.objective, info=info, **extra_metadata)
    ema.restore(unet.parameters())
    return out
