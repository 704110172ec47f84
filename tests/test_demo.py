"""The picture demo: each solver's model-call budget is what it really calls, and the command runs end to end."""
import subprocess
import sys

import pytest
import torch

import fused_diffusion as fd
from fused_diffusion import demo


@pytest.mark.parametrize("solver, budget, expected", [
    ("euler", 5, (5, 5, {})),
    ("heun", 10, (9, 5, {})),
    ("dpm_2", 5, (5, 3, {})),
    ("amed", 5, (5, 3, {"afs": False})),
    ("amed", 10, (10, 6, {"afs": True})),
])
def test_within_budget_picks_the_most_calls_that_fit(solver, budget, expected):
    assert demo.within_budget(solver, budget) == expected


class CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize("budget", [5, 10])
def test_every_solver_run_makes_the_model_calls_it_reports(budget):
    denoiser, alphas_cumprod, shape = fd.zoo.digits()
    counter = CountingModel(denoiser.inner_model)
    counted = fd.EpsDenoiser(counter, alphas_cumprod)
    runs = demo.solver_runs(budget, denoiser.sigma_min, denoiser.sigma_max, alphas_cumprod)
    assert [r.solver for r in runs] == [*demo.ODE_SOLVERS, "ddim"]
    for run in runs:
        counter.calls = 0
        images = run.sample(counted, torch.randn(2, *shape))
        assert counter.calls == run.calls <= budget, run.solver
        assert images.shape == (2, *shape) and torch.isfinite(images).all()


def test_digits_demo_end_to_end_writes_the_pictures_and_table(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fused_diffusion", "demo", "--samples", "12", "--reference-samples", "4",
         "--reference-calls", "30", "--calls", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in
            [*demo.ODE_SOLVERS, "ddim"]]
    assert [r[0] for r in rows] == [*demo.ODE_SOLVERS, "ddim"]
    assert all(int(r[1]) <= 3 and float(r[2]) > 0 for r in rows)
    for name in ("samples.png", "quality.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gaussian_mixture_demo_runs():
    out = subprocess.run([sys.executable, "-m", "fused_diffusion", "demo", "--gmm", "--steps", "4", "--batch", "8"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "Gaussian mixture" in out and len([line for line in out.splitlines() if line.startswith("heun")]) == 1
