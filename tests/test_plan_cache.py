"""The plans `sample_*` calls keep: reused for the same solver settings, schedule values and stop; never for a schedule
whose values changed, nor for a solver holding more than plain settings."""
import torch

import fused_diffusion as fd
from fused_diffusion.solvers import get_solver, run


def test_the_same_call_reuses_its_plan_and_new_values_make_a_new_one():
    schedule = fd.get_sigmas_karras(6, 0.1, 10.0)
    first = run.cached_plan(get_solver("dpmpp_2m"), schedule)
    assert run.cached_plan(get_solver("dpmpp_2m"), schedule.clone()) is first
    assert run.cached_plan(get_solver("dpmpp_2m"), schedule, stop=3) is not first
    assert run.cached_plan(get_solver("euler", s_churn=1.0), schedule) is not run.cached_plan(get_solver("euler"), schedule)
    schedule[1] *= 0.9  # changed in place: its values are the key, not the tensor
    assert run.cached_plan(get_solver("dpmpp_2m"), schedule) is not first


def test_settings_that_change_only_table_values_make_a_new_plan():
    """graph_key leaves such settings out (they need no new graph): the plan cache must not."""
    schedule = fd.get_sigmas_karras(6, 0.1, 10.0)
    for name, options in (("euler_ancestral", ({"eta": 0.5}, {"eta": 0.7})), ("dpmpp_2m_sde", ({"eta": 0.3}, {"eta": 1.0})),
                          ("lms", ({"order": 2}, {"order": 3}))):
        first, second = (run.cached_plan(get_solver(name, **o), schedule) for o in options)
        assert first is not second and not all(torch.equal(first.host[k], second.host[k]) for k in first.host)


def test_an_edited_schedule_samples_as_a_fresh_plan_would():
    model = lambda x, sigma: x / (1 + sigma.reshape(-1, 1) ** 2)  # noqa: E731
    x = torch.randn(3, 4, dtype=torch.float64)
    schedule = fd.get_sigmas_karras(5, 0.1, 10.0, device="cpu").double()
    fd.sample_heun(model, x, schedule, disable=True)
    schedule[2] *= 0.5
    expected = run.run_steps(run.Run(run.Plan(get_solver("heun"), schedule), model, x), x)
    assert torch.equal(fd.sample_heun(model, x, schedule, disable=True), expected)


def test_solvers_with_state_get_a_new_plan_each_call():
    class Learned(type(get_solver("euler"))):
        def __init__(self):
            super().__init__()
            self.predictor = torch.nn.Linear(1, 1)  # not a plain setting: its weights may change between calls

    schedule = fd.get_sigmas_karras(4, 0.1, 10.0)
    solver = Learned()
    assert run.cached_plan(solver, schedule) is not run.cached_plan(solver, schedule)


def test_at_most_plans_kept_are_kept():
    for n in range(run.PLANS_KEPT + 5):
        run.cached_plan(get_solver("euler"), fd.get_sigmas_karras(n + 2, 0.1, 10.0))
    assert len(run._plans) <= run.PLANS_KEPT
