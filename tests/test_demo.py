"""The demo: time to quality (the equal-quality speed-up, the advice per budget, the run end to end) and the solver
grid (each solver's model-call budget is what it really calls)."""
import argparse
import csv
import math
import sys

import pytest
import torch

import fused_diffusion as fd
from fused_diffusion import demo
from fused_diffusion.zoo import sampling_methods


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


def demo_args(*argv: str) -> argparse.Namespace:
    """The demo's options as `python -m fused_diffusion demo ARGV` parses them (run in this process: the CLI itself
    runs in CI's first command)."""
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(argv)
    demo.check_mode_options(parser, args)
    return args


def test_solver_grid_end_to_end_writes_the_pictures_and_table(tmp_path, capsys):
    demo.main(demo_args("--solvers", "--samples", "12", "--reference-samples", "4", "--reference-calls", "30",
                        "--calls", "3", "--out", str(tmp_path)))
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in
            [*demo.ODE_SOLVERS, "ddim"]]
    assert [r[0] for r in rows] == [*demo.ODE_SOLVERS, "ddim"]
    assert all(int(r[1]) <= 3 and float(r[2]) > 0 for r in rows)
    for name in ("samples.png", "quality.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gaussian_mixture_demo_runs(capsys):
    demo.main(demo_args("--gmm", "--steps", "4", "--batch", "8"))
    out = capsys.readouterr().out
    assert "Gaussian mixture" in out and len([line for line in out.splitlines() if line.startswith("heun")]) == 1


def run(label: str, kind: str, calls: int, seconds: float, fd_value: float) -> demo.Measured:
    method = sampling_methods.Method(label, kind, (calls,), prepare=None)
    return demo.Measured(method, calls, seconds, fd_value, 0.9, torch.zeros(1, 1, 8, 8))


BASELINES = [run("A", "baseline", 5, 1.0, 40.0), run("A", "baseline", 10, 2.0, 10.0),
             run("A", "baseline", 20, 4.0, 6.0), run("B", "baseline", 9, 3.0, 20.0),  # B: dominated by A's 10 calls
             run("A", "baseline", 50, 10.0, 6.5)]  # slower and worse than 20 calls: off the front


@pytest.mark.parametrize("fd_value, expected", [
    (10.0, (2.0, "=")),                                   # on a run
    (20.0, (math.sqrt(1.0 * 2.0), "=")),                  # half-way in log FD between 40 and 10: geometric mean
    (50.0, (1.0, "<=")),                                  # worse than the cheapest run
    (5.0, (4.0, ">=")),                                   # better than every run: the best run's time
])
def test_baseline_seconds_reads_the_front_of_the_baselines(fd_value, expected):
    seconds, relation = demo.baseline_seconds(fd_value, BASELINES)
    assert relation == expected[1] and seconds == pytest.approx(expected[0])


def budgets_and_labels(advice: list[tuple[str, demo.Measured]]) -> list[tuple[str, str]]:
    return [(budget, run.method.label) for budget, run in advice]


def test_speedup_and_advice_per_budget():
    fast = run("fast", "few-step model", 1, 0.1, 10.0)
    slow = run("slow", "U-Net method", 4, 8.0, 5.0)
    assert demo.speedup_text(fast, BASELINES) == "20.0x" and demo.speedup_text(slow, BASELINES) == ">0.5x"
    assert demo.speedup_text(BASELINES[0], BASELINES) == "·"
    # the best within each budget, listed where it changes, until one reaches the target (slow's 5.0 <= 6.6)
    advice = demo.which_to_use([fast, slow, *BASELINES], target=6.6)
    assert budgets_and_labels(advice) == [("1 call", "fast"), ("<= 4 calls", "slow")]
    # never reaching the target: every change is listed; A at 10 calls only ties fast (FD 10) and is not
    assert budgets_and_labels(demo.which_to_use([fast, *BASELINES], target=1.0)) == [("1 call", "fast"),
                                                                                      ("<= 20 calls", "A")]


def test_time_to_quality_end_to_end_shows_every_registered_method(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sampling_methods, "BASELINE_CALLS", (5, 8))  # the ladder's cheap end: the suite's time
    runs = demo.main(demo_args("--device", "cpu", "--samples", "6", "--out", str(tmp_path)))
    out = capsys.readouterr().out
    table = out[out.index("method"):out.index("* the baselines")]
    for method in fd.zoo.methods():
        assert method.label in table
    assert {(r.method.label, r.calls) for r in runs} == {(m.label, c) for m in fd.zoo.methods() for c in m.calls}
    assert "which to use" in out and all(math.isfinite(r.fd) and r.seconds > 0 for r in runs)
    for name in ("samples.png", "quality.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (tmp_path / "time_to_quality.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], int(r["calls"])) for r in rows] == [(r.method.label, r.calls) for r in runs]
    assert all(r["machine"] and r["torch"] for r in rows)


@pytest.mark.parametrize("argv, expected", [
    (["/x/fused_diffusion/__main__.py", "demo", "--out", "a b"], "python -m fused_diffusion demo --out 'a b'"),
    (["bench/bench_ops.py", "--host"], "python bench/bench_ops.py --host"),
])
def test_csv_rows_name_the_command_as_typed(monkeypatch, argv, expected):
    from fused_diffusion import provenance

    monkeypatch.setattr(sys, "argv", argv)
    assert provenance.command() == expected
