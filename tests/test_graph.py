"""fd.Sampler: eager behaviour on CPU, and whole-loop CUDA graphs (capture, replay, invalidation) on a GPU."""
import warnings

import pytest
import torch
from torch import nn

import fused_diffusion as fd
from fused_diffusion.engine import LoopWatch, records_own_cuda_graphs

cuda = pytest.mark.gpu


class TinyDenoiser(nn.Module):
    """A small conv net in the denoiser convention, with weights that the tests edit."""

    def __init__(self, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, sigma, **kwargs):
        c = (1 / (1 + sigma**2)).reshape(-1, 1, 1, 1).to(x.dtype)
        return c * x + self.scale * torch.tanh(self.conv(x))


def schedule(n=6, sigma_max=20.0):
    return fd.get_sigmas_karras(n, 0.01, sigma_max)


class TestEager:
    gmm = fd.GaussianMixture.random(3, 4, seed=0)
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)) * 20

    @pytest.mark.parametrize("solver", ["euler", "heun", "dpm_2", "dpmpp_2m", "amed", "ipndm"])
    def test_cpu_runs_the_same_solver_code(self, solver):
        sampler = fd.Sampler(self.gmm, solver, schedule())
        expected = getattr(fd, f"sample_{solver}")(self.gmm, self.noise, schedule(), disable=True)
        torch.testing.assert_close(sampler(self.noise), expected)
        assert sampler.captures == 0

    def test_new_schedule_same_length(self):
        sampler = fd.Sampler(self.gmm, "heun", schedule())
        sampler(self.noise)
        sampler.set_schedule(schedule(sigma_max=10.0))
        torch.testing.assert_close(sampler(self.noise), fd.sample_heun(self.gmm, self.noise, schedule(sigma_max=10.0), disable=True))

    def test_schedules_ending_above_zero(self):
        sampler = fd.Sampler(self.gmm, "heun", schedule()[:-1])
        torch.testing.assert_close(sampler(self.noise), fd.sample_heun(self.gmm, self.noise, schedule()[:-1], disable=True))
        key = sampler.cache_key(self.noise)[0]
        sampler.set_schedule(schedule(sigma_max=10.0)[:-1])  # same length, also ending above 0: replayed
        assert sampler.cache_key(self.noise)[0] == key
        torch.testing.assert_close(sampler(self.noise),
                                   fd.sample_heun(self.gmm, self.noise, schedule(sigma_max=10.0)[:-1], disable=True))
        sampler.set_schedule(fd.get_sigmas_karras(5, 0.01, 20.0))  # same length, ending at 0: another step structure
        assert sampler.cache_key(self.noise)[0] != key

    def test_trajectory_out_and_callback(self):
        sampler = fd.Sampler(self.gmm, "euler", schedule(), keep_trajectory=True)
        out = torch.empty_like(self.noise)
        seen = []
        x, trajectory = sampler(self.noise, out=out, callback=seen.append)
        assert x is out and trajectory.shape == (7, 5, 4)
        torch.testing.assert_close(trajectory[0], self.noise)
        torch.testing.assert_close(trajectory[-1], x)
        assert [s["i"] for s in seen] == list(range(6))

    def test_solver_options_and_errors(self):
        sampler = fd.Sampler(self.gmm, "euler_ancestral", schedule(), eta=0.0)
        torch.testing.assert_close(sampler(self.noise), fd.sample_euler_ancestral(self.gmm, self.noise, schedule(), eta=0.0, disable=True))
        with pytest.raises(ValueError, match="unknown solver 'rk9'"):
            fd.Sampler(self.gmm, "rk9", schedule())
        with pytest.raises(ValueError, match="sigmas"):
            fd.Sampler(self.gmm, "heun")
        with pytest.raises(ValueError, match="must be decreasing"):
            fd.Sampler(self.gmm, "heun", torch.tensor([1.0, 2.0, 0.0]))
        with pytest.raises(FloatingPointError, match="step 0"):
            fd.Sampler(lambda x, s: x * float("nan"), "euler", schedule())(self.noise)

    def test_no_autograd_graph_over_the_loop(self):
        model = TinyDenoiser()  # parameters require grad, as models loaded by diffusers do
        noise = torch.randn(2, 4, 8, 8)
        assert not fd.Sampler(model, "heun", schedule())(noise).requires_grad
        assert not fd.sample_heun(model, noise, schedule(), disable=True).requires_grad

    def test_models_compiled_with_their_own_cuda_graphs_are_recognised(self):
        model = TinyDenoiser()
        assert not records_own_cuda_graphs(model)
        assert not records_own_cuda_graphs(torch.compile(model, mode="default"))
        assert not records_own_cuda_graphs(torch.compile(model, mode="max-autotune-no-cudagraphs"))
        wrapped = fd.EpsDenoiser(torch.compile(model, mode="reduce-overhead"), fd.ddpm_alphas_cumprod())
        assert records_own_cuda_graphs(wrapped)
        assert records_own_cuda_graphs(torch.compile(lambda x: x, mode="max-autotune"))

    def test_loop_watch_of_inference_tensors(self):
        with torch.inference_mode():
            model = TinyDenoiser()
        assert not LoopWatch(model).changed()

    @pytest.mark.parametrize("edit", ["in_place", "replace_parameter", "replace_buffer", "swap_submodule"])
    def test_loop_watch_sees_edits(self, edit):
        model = TinyDenoiser()
        model.register_buffer("table", torch.zeros(3))
        watch = LoopWatch(model)
        assert not watch.changed()
        if edit == "in_place":
            with torch.no_grad():
                model.conv.weight.add_(0.01)  # e.g. fusing a LoRA in place
        elif edit == "replace_parameter":
            model.scale = nn.Parameter(torch.tensor(0.7))
        elif edit == "replace_buffer":
            model.table = torch.ones(3)
        else:
            model.conv = nn.Conv2d(4, 4, 3, padding=1)  # e.g. a LoRA wrapper injected in its place
        assert watch.changed()


class ConfiguredHook:
    """A forward hook carrying a configuration, as U-Net features do: its graph_key() is part of the cache key."""

    def __init__(self, factor):
        self.factor = factor

    def graph_key(self):
        return ("scale_output", self.factor)

    def __call__(self, module, inputs, output):
        return output * self.factor


class Predictor(nn.Module):
    """An AMED-style predictor (r from sigma) with weights of its own."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, x, sigma, sigma_next, analytic):
        return torch.sigmoid(self.bias + 0 * sigma)


def patch_forward(model):
    original = model.forward
    model.forward = lambda x, sigma, **kw: original(x, sigma, **kw) * 0.5  # e.g. a feature wrapping forward
    return lambda: delattr(model, "forward")


def scale_weights(model):
    with torch.no_grad():
        model.conv.weight.mul_(1.5)  # e.g. fusing a LoRA in place


def replace_conv(model):
    model.conv = nn.Conv2d(4, 4, 3, padding=1).to(model.conv.weight.device)  # e.g. a LoRA layer injected


# Each feature kind: (edit(model) -> undo or None, whether it changes the structure (a new cache key) or the
# weights (same key, the graph recaptured))
FEATURE_CHANGES = {
    "patched_forward": (patch_forward, "structure"),
    "forward_hook": (lambda m: m.conv.register_forward_hook(ConfiguredHook(2.0)).remove, "structure"),
    "pre_hook": (lambda m: m.conv.register_forward_pre_hook(lambda mod, args: (args[0] * 2,)).remove, "structure"),
    "global_hook": (lambda m: nn.modules.module.register_module_forward_hook(lambda mod, i, o: o * 1.01).remove,
                    "structure"),
    "weights_in_place": (scale_weights, "weights"),
    "replaced_submodule": (replace_conv, "weights"),
}


class TestCacheKey:
    """What the graph cache compares (CPU: the key itself, and that the eager path sees each change)."""

    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 20

    @pytest.mark.parametrize("change", sorted(FEATURE_CHANGES))
    def test_every_feature_kind_changes_the_key_or_the_weights(self, change):
        torch.manual_seed(0)
        model = TinyDenoiser()
        sampler = fd.Sampler(model, "euler", schedule())
        key, weights = sampler.cache_key(self.noise)
        before = sampler(self.noise)
        edit, kind = FEATURE_CHANGES[change]
        undo = edit(model)
        try:
            new_key, new_weights = sampler.cache_key(self.noise)
            assert (new_key != key) == (kind == "structure")
            assert kind == "structure" or new_weights != weights
            after = sampler(self.noise)
            torch.testing.assert_close(after, fd.sample_euler(model, self.noise, schedule(), disable=True))
            assert not torch.allclose(after, before)
        finally:
            if undo is not None:
                undo()
        if undo is not None:
            assert sampler.cache_key(self.noise)[0] == key  # undone: the old graph would be found again

    def test_a_feature_configuration_is_part_of_the_key(self):
        model = TinyDenoiser()
        hook = ConfiguredHook(2.0)
        model.conv.register_forward_hook(hook)
        sampler = fd.Sampler(model, "euler", schedule())
        key = sampler.cache_key(self.noise)[0]
        hook.factor = 3.0
        assert sampler.cache_key(self.noise)[0] != key

    def test_diffusers_hooks_and_their_configuration_are_part_of_the_key(self):
        hooks = pytest.importorskip("diffusers.hooks")

        class Scale(hooks.ModelHook):
            def __init__(self, factor):
                super().__init__()
                self.factor = factor

            def graph_key(self):
                return self.factor

            def post_forward(self, module, output):
                return output * self.factor

        model = TinyDenoiser()
        sampler = fd.Sampler(model, "euler", schedule())
        key = sampler.cache_key(self.noise)[0]
        hook = Scale(2.0)
        hooks.HookRegistry.check_if_exists_or_initialize(model.conv).register_hook(hook, "scale")
        with_hook = sampler.cache_key(self.noise)[0]
        assert with_hook != key
        torch.testing.assert_close(sampler(self.noise), fd.sample_euler(model, self.noise, schedule(), disable=True))
        hook.factor = 3.0
        assert sampler.cache_key(self.noise)[0] not in (key, with_hook)
        model.conv._diffusers_hook.remove_hook("scale")
        assert sampler.cache_key(self.noise)[0] == key

    def test_predictor_weights_and_identity_are_watched(self):
        predictor = Predictor()
        sampler = fd.Sampler(TinyDenoiser(), "amed", schedule(), predictor=predictor)
        key, weights = sampler.cache_key(self.noise)
        with torch.no_grad():
            predictor.bias.add_(1.0)  # a training step
        new_key, new_weights = sampler.cache_key(self.noise)
        assert new_key == key and new_weights != weights
        sampler.solver.predictor = Predictor()  # retrained from scratch: another module
        assert sampler.cache_key(self.noise)[0] != key

    def test_solver_options_and_shapes_are_part_of_the_key(self):
        model = TinyDenoiser()
        key = fd.Sampler(model, "euler", schedule()).cache_key(self.noise)[0]
        assert fd.Sampler(model, "euler", schedule(), s_churn=1.0).cache_key(self.noise)[0] != key
        assert fd.Sampler(model, "euler", schedule(8)).cache_key(self.noise)[0] != key
        assert fd.Sampler(model, "euler", schedule()).cache_key(self.noise[:1])[0] != key
        assert fd.Sampler(model, "euler", schedule(sigma_max=5.0)).cache_key(self.noise)[0] == key  # replayed

    def test_cfg_scale_is_neither_key_nor_weights(self):
        cfg = fd.CFGDenoiser(TinyDenoiser(), scale=3.0)
        sampler = fd.Sampler(cfg, "euler", schedule())
        extra = dict(cond=torch.ones(2), uncond=torch.zeros(2))
        before = sampler.cache_key(self.noise, extra)
        cfg.set_scale(5.0)  # a device row rewritten in place: replayed, not recaptured
        assert sampler.cache_key(self.noise, extra) == before


@cuda
class TestCudaGraph:
    @pytest.fixture(autouse=True)
    def _need_cuda(self):
        if not torch.cuda.is_available():
            pytest.skip("needs CUDA")

    def setup_model(self):
        torch.manual_seed(0)
        return TinyDenoiser().cuda(), torch.randn(2, 4, 16, 16, device="cuda") * 20

    @pytest.mark.parametrize("solver", ["euler", "heun", "dpm_2", "dpmpp_2m", "amed", "ipndm"])
    def test_graph_equals_eager_and_replays(self, solver):
        model, noise = self.setup_model()
        sampler = fd.Sampler(model, solver, schedule().cuda())
        eager = getattr(fd, f"sample_{solver}")(model, noise, schedule().cuda(), disable=True)
        torch.testing.assert_close(sampler(noise), eager, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sampler(noise * 0.5), getattr(fd, f"sample_{solver}")(model, noise * 0.5, schedule().cuda(), disable=True), rtol=1e-4, atol=1e-4)
        assert sampler.captures == 1

    def test_schedule_change_rewrites_tables_without_recapture(self):
        model, noise = self.setup_model()
        sampler = fd.Sampler(model, "heun", schedule().cuda())
        sampler(noise)
        sampler.set_schedule(schedule(sigma_max=7.0).cuda())
        expected = fd.sample_heun(model, noise, schedule(sigma_max=7.0).cuda(), disable=True)
        torch.testing.assert_close(sampler(noise), expected, rtol=1e-4, atol=1e-4)
        assert sampler.captures == 1

    def test_schedule_ending_above_zero_rewrites_tables_without_recapture(self):
        model, noise = self.setup_model()
        sampler = fd.Sampler(model, "dpmpp_2m", schedule().cuda()[:-1])
        sampler(noise)
        sampler.set_schedule(schedule(sigma_max=7.0).cuda()[:-1])
        expected = fd.sample_dpmpp_2m(model, noise, schedule(sigma_max=7.0).cuda()[:-1], disable=True)
        torch.testing.assert_close(sampler(noise), expected, rtol=1e-4, atol=1e-4)
        assert sampler.captures == 1

    def test_weight_edit_model_shape_dtype_recapture(self):
        model, noise = self.setup_model()
        sampler = fd.Sampler(model, "euler", schedule().cuda())
        sampler(noise)
        with torch.no_grad():
            model.conv.weight.mul_(1.5)
        torch.testing.assert_close(sampler(noise), fd.sample_euler(model, noise, schedule().cuda(), disable=True), rtol=1e-4, atol=1e-4)
        assert sampler.captures == 2
        sampler(noise[:1])
        sampler(noise.half())
        assert sampler.captures == 4
        sampler.model = TinyDenoiser().cuda()
        sampler(noise)
        assert sampler.captures == 5

    def test_lru_bound(self):
        model, noise = self.setup_model()
        sampler = fd.Sampler(model, "euler", schedule().cuda(), max_graphs=2)
        for b in (1, 2, 1, 2):
            sampler(noise[:b])
        assert sampler.captures == 2
        sampler(noise[:1].repeat(3, 1, 1, 1))  # evicts batch 1, the least recently used
        sampler(noise[:2])
        assert len(sampler.graphs) == 2 and sampler.captures == 3
        sampler(noise[:1])
        assert sampler.captures == 4

    @pytest.mark.parametrize("solver,options", [("euler_ancestral", {}), ("euler", dict(s_churn=2.0)), ("consistency", {})])
    def test_stochastic_graph_equals_eager_for_same_seed(self, solver, options):
        model, noise = self.setup_model()
        sampler = fd.Sampler(model, solver, schedule().cuda(), **options)
        torch.manual_seed(7)
        graphed = sampler(noise)
        torch.manual_seed(7)
        eager = getattr(fd, f"sample_{solver}")(model, noise, schedule().cuda(), disable=True, **options)
        torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)
        torch.manual_seed(7)
        torch.testing.assert_close(sampler(noise), graphed)

    def test_capture_failure_falls_back_with_one_warning(self):
        model, noise = self.setup_model()

        def syncing_model(x, sigma):
            _ = float(sigma[0])  # a host sync: illegal during capture
            return model(x, sigma)

        sampler = fd.Sampler(syncing_model, "euler", schedule().cuda())
        with pytest.warns(RuntimeWarning, match="capture failed"):
            x = sampler(noise)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sampler(noise)
        torch.testing.assert_close(x, fd.sample_euler(model, noise, schedule().cuda(), disable=True), rtol=1e-4, atol=1e-4)

    def test_compiled_model_inside_capture(self):
        model, noise = self.setup_model()
        compiled = torch.compile(model, mode="default")
        sampler = fd.Sampler(compiled, "heun", schedule().cuda())
        expected = fd.sample_heun(model, noise, schedule().cuda(), disable=True)
        torch.testing.assert_close(sampler(noise), expected, rtol=1e-3, atol=1e-3)
        assert sampler.captures == 1

    def test_reduce_overhead_model_runs_eagerly_with_a_clear_warning(self):
        model, noise = self.setup_model()
        sampler = fd.Sampler(torch.compile(model, mode="reduce-overhead"), "euler", schedule().cuda())
        with pytest.warns(RuntimeWarning, match="mode='default' or 'max-autotune-no-cudagraphs'"):
            x = sampler(noise)
        torch.testing.assert_close(x, fd.sample_euler(model, noise, schedule().cuda(), disable=True), rtol=1e-3, atol=1e-3)
        assert sampler.captures == 0

    def test_cfg_and_extra_args_are_copied_in(self):
        model, noise = self.setup_model()
        cfg = fd.CFGDenoiser(lambda x, s, cond: model(x, s) * cond.reshape(-1, 1, 1, 1), scale=3.0)
        sampler = fd.Sampler(cfg, "euler", schedule().cuda())
        for c in (1.0, 2.0):
            extra = dict(cond=torch.full((2,), c, device="cuda"), uncond=torch.zeros(2, device="cuda"))
            expected = fd.sample_euler(cfg, noise, schedule().cuda(), extra_args=extra, disable=True)
            torch.testing.assert_close(sampler(noise, extra_args=extra), expected, rtol=1e-4, atol=1e-4)
        cfg.set_scale(5.0)  # a device row rewritten in place: replayed, not recaptured
        expected = fd.sample_euler(cfg, noise, schedule().cuda(), extra_args=extra, disable=True)
        torch.testing.assert_close(sampler(noise, extra_args=extra), expected, rtol=1e-4, atol=1e-4)
        assert sampler.captures == 1

    @pytest.mark.parametrize("change", sorted(FEATURE_CHANGES))
    def test_every_feature_kind_recaptures(self, change):
        model, noise = self.setup_model()
        sampler = fd.Sampler(model, "euler", schedule().cuda())
        sampler(noise)
        edit, _ = FEATURE_CHANGES[change]
        undo = edit(model)
        try:
            expected = fd.sample_euler(model, noise, schedule().cuda(), disable=True)
            torch.testing.assert_close(sampler(noise), expected, rtol=1e-4, atol=1e-4)
            assert sampler.captures == 2
        finally:
            if undo is not None:
                undo()

    def test_predictor_training_recaptures(self):
        model, noise = self.setup_model()
        predictor = Predictor().cuda()
        sampler = fd.Sampler(model, "amed", schedule().cuda(), predictor=predictor)
        sampler(noise)
        with torch.no_grad():
            predictor.bias.add_(1.0)
        expected = fd.sample_amed(model, noise, schedule().cuda(), predictor=predictor, disable=True)
        torch.testing.assert_close(sampler(noise), expected, rtol=1e-4, atol=1e-4)
        assert sampler.captures == 2
