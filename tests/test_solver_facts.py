"""What each registered solver says of itself (fd.solvers.SOLVERS: model calls of an n-step run, whether it draws
noise and which option sets it, its schedule kind, label and paper) against what a run really does: a counting model
over a few schedules, ending at 0 and above it, with the options that change the count."""
import inspect

import pytest
import torch

import fused_diffusion as fd
from fused_diffusion import solvers
from fused_diffusion.solvers.base import SCHEDULE_KINDS

ALPHAS_CUMPROD = fd.ddpm_alphas_cumprod()


def predictor(x, sigma, sigma_next, analytic):
    return torch.full_like(sigma, 0.4)


# every registered solver with the option sets that change what a step calls or draws
OPTIONS = {
    "euler": [{}, {"s_churn": 1.0}],
    "euler_ancestral": [{}, {"eta": 0.0}],
    "heun": [{}, {"s_churn": 1.0}],
    "dpm_2": [{}, {"s_churn": 1.0}],
    "dpm_2_ancestral": [{}, {"eta": 0.0}, {"eta": 0.5}],
    "lms": [{}, {"order": 1}],
    "dpm_fast": [{"nfe": nfe} for nfe in range(1, 8)] + [{"nfe": 6, "eta": 0.5}],
    "dpmpp_2s_ancestral": [{}, {"eta": 0.0}],
    "dpmpp_sde": [{}, {"eta": 0.0, "r": 0.3}],
    "dpmpp_2m": [{}],
    "dpmpp_2m_sde": [{}, {"eta": 0.0, "solver_type": "heun"}],
    "dpmpp_3m_sde": [{}, {"eta": 0.0}],
    "amed": [{}, {"afs": False}, {"predictor": predictor}, {"afs": False, "predictor": predictor}],
    "ipndm": [{}, {"afs": True}, {"predictor": predictor}, {"afs": True, "predictor": predictor},
              {"max_order": 1, "predictor": predictor}],
    "ddim": [{"alphas_cumprod": ALPHAS_CUMPROD}, {"alphas_cumprod": ALPHAS_CUMPROD, "eta": 0.5}],
    "shortcut": [{}],
    "consistency": [{}],
    "flow_euler": [{}],
    "lcm": [{"alphas_cumprod": ALPHAS_CUMPROD}],
    "tcd": [{"alphas_cumprod": ALPHAS_CUMPROD}, {"alphas_cumprod": ALPHAS_CUMPROD, "gamma": 0.0}],
    "pcm": [{"alphas_cumprod": ALPHAS_CUMPROD}],
    "unipc": [{}, {"order": 3}, {"order": 1}, {"corrector": False}, {"disable_corrector": (0, 1)},
              {"lower_order_final": False}],
}
CASES = [(name, options) for name, sets in OPTIONS.items() for options in sets]


def case_id(case):
    name, options = case
    shown = {key: value.__name__ if callable(value) else "..." if isinstance(value, torch.Tensor) else value
             for key, value in options.items()}
    return f"{name}{shown or ''}"


def schedules(solver: solvers.Solver, n: int) -> list[tuple[torch.Tensor, bool]]:
    """(schedule of an n-step run, whether it ends at sigma = 0) for a few schedules of the solver's kind."""
    kind = solver.schedule_kind
    if kind == "sigmas":
        return [(fd.get_sigmas_karras(n, 0.01, 80.0), True), (fd.get_sigmas_karras(n + 1, 0.01, 80.0)[:-1], False),
                (fd.get_sigmas_exponential(n, 0.05, 20.0), True),
                (fd.get_sigmas_exponential(n + 1, 0.05, 20.0)[:-1], False)]
    if kind == "timesteps":
        return [(solvers.ddim_timesteps(1000, n, spacing), False) for spacing in ("leading", "trailing", "linspace")]
    if kind == "flow_sigmas":
        return [(torch.linspace(1, 0, n + 1), True), (torch.linspace(1, 0.05, n + 1), False)]
    if kind == "flow_times":
        return [(fd.get_flow_times(n), False)]
    assert kind == "sigma_range", kind
    return [(torch.tensor([80.0, 0.01]), False)]


def counted_run(solver: solvers.Solver, schedule: torch.Tensor, seed: int = 0) -> tuple[int, torch.Tensor]:
    """(model calls, result) of one eager run with noise from a generator seeded `seed`."""
    calls = 0

    def model(x, *args, **kwargs):
        nonlocal calls
        calls += 1
        return x * 0.5

    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    out = solvers.sample(solver, model, x, schedule, disable=True, generator=torch.Generator().manual_seed(seed))
    return calls, out


def test_every_registered_solver_is_covered_and_named():
    assert set(OPTIONS) == set(solvers.SOLVERS)
    labels = [cls.label for cls in solvers.SOLVERS.values()]
    assert len(set(labels)) == len(labels) and "solver" not in labels
    assert all(cls.paper for cls in solvers.SOLVERS.values())
    assert all(cls.schedule_kind in SCHEDULE_KINDS for cls in solvers.SOLVERS.values())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_calls_is_what_a_run_makes(case):
    name, options = case
    solver = solvers.get_solver(name, **options)
    for n in (1, 2, 3, 5):
        for schedule, to_zero in schedules(solver, n):
            steps = solver.num_steps(schedule)
            assert steps == n or name == "dpm_fast"
            count, _ = counted_run(solver, schedule)
            assert solver.calls(steps, to_zero=to_zero) == count, (n, schedule.tolist())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_steps_for_is_the_inverse_of_calls(case):
    name, options = case
    solver = solvers.get_solver(name, **options)
    for budget in range(1, 16):
        for to_zero in (True, False):
            steps = solver.steps_for(budget, to_zero=to_zero)
            if steps is None:  # no run makes from 1 to `budget` calls
                first = solver.calls(1, to_zero)
                assert first > budget or first == 0 and solver.calls(2, to_zero) > budget
                continue
            assert 1 <= solver.calls(steps, to_zero) <= budget
            if name != "dpm_fast" or steps < len(solver.orders):  # dpm_fast has no step past its nfe's
                assert solver.calls(steps + 1, to_zero) > budget


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_stochastic_is_whether_runs_differ_by_their_noise(case):
    name, options = case
    solver = solvers.get_solver(name, **options)
    schedule, _ = schedules(solver, 3)[0]
    _, first = counted_run(solver, schedule, seed=0)
    _, second = counted_run(solver, schedule, seed=1)
    assert solver.stochastic == (not torch.equal(first, second))


@pytest.mark.parametrize("name", sorted(solvers.SOLVERS))
def test_the_noise_option_is_what_makes_a_solver_stochastic(name):
    """A solver with a noise option draws noise exactly when it is above 0; one without never does or always does,
    whatever its options."""
    cls = solvers.SOLVERS[name]
    if cls.noise_option is None:
        assert len({solvers.get_solver(name, **options).stochastic for options in OPTIONS[name]}) == 1
        return
    assert cls.noise_option in inspect.signature(cls).parameters
    required = {key: value for key, value in OPTIONS[name][0].items() if key != cls.noise_option}
    assert not solvers.get_solver(name, **required, **{cls.noise_option: 0.0}).stochastic
    assert solvers.get_solver(name, **required, **{cls.noise_option: 0.5}).stochastic


@pytest.mark.parametrize("name", ["dpm_2_ancestral", "dpmpp_2s_ancestral"])
def test_two_call_ancestral_solvers_refuse_to_count_above_eta_1(name):
    """With eta > 1 a step whose sigma_down is 0 makes one call: which steps those are depends on the sigmas."""
    solver = solvers.get_solver(name, eta=1.5)
    schedule = fd.get_sigmas_karras(3, 0.01, 80.0)
    count, _ = counted_run(solver, schedule)
    assert count < 2 * 3 - 1
    with pytest.raises(ValueError, match="sigma_down is 0"):
        solver.calls(3)


def test_the_facts_of_a_solver_outside_the_registry():
    solver = solvers.AnalyticDPM(ALPHAS_CUMPROD, variance="small", eta=0.0)
    timesteps = solvers.analytic_dpm_timesteps(1000, 4)
    count, _ = counted_run(solver, timesteps)
    assert solver.calls(4) == count == 4 and not solver.stochastic and solver.label == "Analytic-DPM"
