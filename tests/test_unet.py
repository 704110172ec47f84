"""DeepCache and Skip-Tuning on small random diffusers U-Nets of every standard block type: identity settings equal
the plain U-Net, whole sampling runs equal independent restatements (the DeepCache reference helper's rule, a
skip scaling by torch hooks), one fused launch per skip concatenation, undo, errors, graph keys."""
import pytest
import numpy as np
import torch
from unet_models import KINDS, build

import fused_diffusion as fd
from fused_diffusion import ops

pytest.importorskip("diffusers")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def run(den, extra, shape, steps=6, seed=1, sampler=fd.sample_euler):
    sigmas = fd.get_sigmas_karras(steps, 0.05, 20.0)
    noise = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    return sampler(den, noise, sigmas, extra_args=extra, disable=True)


def skip_channels_hooks(unet, rhos):
    """The independent Skip-Tuning restatement: a pre-hook on each up-block resnet that receives a concatenation
    scales its last C channels (C = the skip's channels) by rho_i, i counting skips from the deepest."""
    handles, index = [], 0
    for block in unet.up_blocks:
        one_skip = type(block).__name__.startswith("K")
        if one_skip and block is unet.up_blocks[0]:
            continue  # the k-upscaler's deepest level passes no skip connection
        per_block = {}

        def remember(module, args, kwargs, per_block=per_block):
            res = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
            per_block["channels"] = [r.shape[1] for r in reversed(res) if r is not None]

        handles.append(block.register_forward_pre_hook(remember, with_kwargs=True))
        for j, resnet in enumerate(block.resnets):
            if one_skip and j > 0:
                continue
            rho = rhos[index]
            index += 1

            def scale(module, args, j=j, rho=rho, per_block=per_block):
                x = args[0]
                c = per_block["channels"][j]
                return (torch.cat([x[:, :-c], x[:, -c:] * rho], dim=1), *args[1:])

            handles.append(resnet.register_forward_pre_hook(scale))
    assert index == len(rhos)
    return handles


class ReferenceDeepCache:
    """DeepCacheSDHelper's rule (the `deepcache` package), restated over model calls: every down/mid/up layer and
    block is wrapped; on a shallow call the ones at or below the cache point return their output of the last full
    call. The helper's layer numbering is kept (up layers counted from the block's end); L up layers per block."""

    def __init__(self, unet, interval, branch):
        self.interval = interval
        self.block, self.layer = divmod(branch, len(unet.up_blocks[-1].resnets))
        self.cached, self.patched = {}, []
        n_up = len(unet.up_blocks)
        for b, block in enumerate(unet.down_blocks):
            for j, attn in enumerate(getattr(block, "attentions", None) or []):
                self.wrap(attn, ("down", "attn", b, j), b, j, "down")
            for j, resnet in enumerate(block.resnets):
                self.wrap(resnet, ("down", "resnet", b, j), b, j, "down")
            for name in ("downsamplers", "resnet_down", "skip_conv"):
                parts = getattr(block, name, None)
                for part in (parts if isinstance(parts, torch.nn.ModuleList) else [parts] if parts is not None else []):
                    self.wrap(part, ("down", name, b), b, len(block.resnets), "down")
            self.wrap(block, ("down", "block", b), b, 0, "down")
        if unet.mid_block is not None:
            self.wrap(unet.mid_block, ("mid",), 0, 0, "mid")
        for u, block in enumerate(unet.up_blocks):
            b, layers = n_up - 1 - u, len(block.resnets)
            for j, attn in enumerate(getattr(block, "attentions", None) or []):
                if len(block.attentions) == layers:  # per-resnet attentions (AttnSkip's single one runs after)
                    self.wrap(attn, ("up", "attn", b, j), b, layers - j - 1, "up")
            for j, resnet in enumerate(block.resnets):
                self.wrap(resnet, ("up", "resnet", b, j), b, layers - j - 1, "up")
            self.wrap(block, ("up", "block", b), b, 0, "up")

    def skip(self, block_i, layer_i, kind):
        if fd.current_model_call().index % self.interval == 0:
            return False
        if block_i > self.block or kind == "mid":
            return True
        if block_i < self.block:
            return False
        return layer_i >= self.layer if kind == "down" else layer_i > self.layer

    def wrap(self, module, key, block_i, layer_i, kind):
        original = module.forward

        def forward(*args, **kwargs):
            if self.skip(block_i, layer_i, kind):
                return self.cached[key]
            self.cached[key] = out = original(*args, **kwargs)
            return out

        module.forward = forward
        self.patched.append(module)

    def remove(self):
        for module in self.patched:
            del module.forward


@pytest.mark.parametrize("kind", KINDS)
def test_identity_settings_equal_the_plain_unet(kind):
    unet, den, extra, shape = build(kind)
    plain = run(den, extra, shape)
    handle = fd.unet.enable_skip_tuning(unet, 1.0)
    assert rel(run(den, extra, shape), plain) <= 1e-6
    handle.disable()
    if kind != "k_upscaler":
        handle = fd.unet.enable_deepcache(unet, interval=1)
        assert rel(run(den, extra, shape), plain) <= 1e-6
        handle.disable()


@pytest.mark.parametrize("kind", KINDS)
def test_skip_tuning_equals_scaling_the_skips_by_hooks(kind):
    unet, den, extra, shape = build(kind)
    handle = fd.unet.enable_skip_tuning(unet, 0.6, 1.1)
    ours = run(den, extra, shape)
    handle.disable()
    count = {"k_upscaler": 3, "plain": 6, "sd": 6, "score_sde": 4}.get(kind, 4)  # the U-Nets' skip connections
    rhos = [0.6 + 0.5 * i / (count - 1) for i in range(count)]
    hooks = skip_channels_hooks(unet, rhos)
    expected = run(den, extra, shape)
    for h in hooks:
        h.remove()
    assert rel(ours, expected) <= 1e-5
    assert rel(ours, run(den, extra, shape)) > 1e-3  # and it did change the samples


@pytest.mark.parametrize("kind,branch", [("plain", 0), ("plain", 1), ("plain", 3), ("resnet_updown", 0),
                                         ("attn_resnet_updown", 1), ("score_sde", 0), ("score_sde", 2), ("sd", 0),
                                         ("sd", 2), ("simple_cross", 1)])
@pytest.mark.parametrize("interval", [2, 3])
def test_deepcache_equals_the_reference_helpers_rule(kind, branch, interval):
    unet, den, extra, shape = build(kind)
    handle = fd.unet.enable_deepcache(unet, interval=interval, branch=branch)
    ours = run(den, extra, shape, sampler=fd.sample_heun)
    handle.disable()
    reference = ReferenceDeepCache(unet, interval, branch)
    expected = run(den, extra, shape, sampler=fd.sample_heun)
    reference.remove()
    assert rel(ours, expected) <= 1e-5
    assert rel(ours, run(den, extra, shape, sampler=fd.sample_heun)) > 1e-4  # caching changed the result


def test_deepcache_with_skip_tuning_equals_both_restatements():
    unet, den, extra, shape = build("sd")
    deepcache = fd.unet.enable_deepcache(unet, interval=3, branch=1)
    skip_tuning = fd.unet.enable_skip_tuning(unet, 0.7)
    ours = run(den, extra, shape)
    deepcache.disable()
    skip_tuning.disable()
    hooks = skip_channels_hooks(unet, [0.7 + 0.3 * i / 5 for i in range(6)])
    reference = ReferenceDeepCache(unet, 3, 1)
    expected = run(den, extra, shape)
    reference.remove()
    for h in hooks:
        h.remove()
    assert rel(ours, expected) <= 1e-5


def test_one_fused_launch_per_skip_concatenation():
    unet, den, extra, shape = build("sd")
    x, sigma = torch.randn(2, *shape), torch.tensor([1.0, 3.0])
    fd.unet.enable_skip_tuning(unet, 0.8)
    backend = ops.backends()["active"]["cpu"]
    with ops.count_op_launches() as launches:
        den(x, sigma, **extra)
    assert launches.launches[("skip_concat", backend)] == 6  # 3 up blocks x 2 resnets
    assert launches.count == 6 + 2  # + the two lincombs of the denoiser adapter


@pytest.mark.parametrize("name", ["torch", "triton"])
def test_skip_tuning_on_every_backend(name):
    if name not in ops.backends()["available"]:
        pytest.skip(f"{name} unavailable")
    unet, den, extra, shape = build("plain")
    fd.unet.enable_skip_tuning(unet, 0.6)
    expected = run(den, extra, shape, steps=3)
    with ops.use_backend(name):
        assert rel(run(den, extra, shape, steps=3), expected) <= 1e-5


def test_blend_mixes_fresh_and_stored_on_later_full_calls():
    unet, den, extra, shape = build("plain")
    plain = fd.unet.enable_deepcache(unet, interval=2)
    no_blend = run(den, extra, shape)
    plain.disable()
    full_reuse = fd.unet.enable_deepcache(unet, interval=2, blend=1.0)  # w = 1: only fresh features, as no blend
    assert rel(run(den, extra, shape), no_blend) <= 1e-6
    full_reuse.disable()
    blended = fd.unet.enable_deepcache(unet, interval=2, blend=0.5)
    assert rel(run(den, extra, shape), no_blend) > 1e-4
    blended.disable()


def test_quadratic_mode_spaces_full_calls_densest_around_the_center():
    from fused_diffusion.unet.deepcache import quadratic_full_calls

    calls = quadratic_full_calls(50, 10, 15)
    assert calls[0] == 0 and len(calls) == len(set(calls)) == 10 and calls == sorted(calls)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    near = min(range(len(calls)), key=lambda i: abs(calls[i] - 15))
    assert gaps[near] <= min(gaps[0], gaps[-1])
    unet, den, extra, shape = build("plain")
    handle = fd.unet.enable_deepcache(unet, interval=3, mode="quadratic", calls=6, center=2)
    assert handle.config.full_calls[0] == 0 and len(handle.config.full_calls) == 2
    run(den, extra, shape)
    with pytest.raises(RuntimeError, match="more calls than configured"):
        run(den, extra, shape, steps=8)
    handle.disable()


def test_separate_passes_per_model_call_keep_separate_caches():
    """Guidance done as two U-Net forwards per model call (unconditional, then conditional) must not mix features:
    each forward slot has its own cache, so the result equals two independently cached U-Nets."""
    unet, den, extra, shape = build("sd")
    uncond = {"encoder_hidden_states": torch.zeros_like(extra["encoder_hidden_states"])}

    def guided(d):
        return lambda x, sigma: d(x, sigma, **uncond) + 3.0 * (d(x, sigma, **extra) - d(x, sigma, **uncond))

    handle = fd.unet.enable_deepcache(unet, interval=3)
    ours = run(guided(den), {}, shape)
    handle.disable()
    twin_unet, twin_den, _, _ = build("sd")
    a, b = fd.unet.enable_deepcache(unet, interval=3), fd.unet.enable_deepcache(twin_unet, interval=3)
    expected = run(lambda x, s: den(x, s, **uncond) + 3.0 * (twin_den(x, s, **extra) - den(x, s, **uncond)), {}, shape)
    a.disable()
    b.disable()
    assert rel(ours, expected) <= 1e-5


def test_a_forward_slot_first_seen_on_a_shallow_call_is_refused():
    unet, den, extra, shape = build("plain")
    fd.unet.enable_deepcache(unet, interval=3)

    def growing(x, sigma):  # one U-Net forward on call 0, two on call 1 (shallow): the second has no stored features
        return sum(den(x, sigma) for _ in range(fd.current_model_call().index + 1))

    with pytest.raises(RuntimeError, match="no full call of this run stored features for it"):
        run(growing, {}, shape)


def test_a_new_batch_size_in_a_shallow_call_is_refused():
    unet, den, extra, shape = build("plain")
    fd.unet.enable_deepcache(unet, interval=3)

    def shrinking(x, sigma):
        call = fd.current_model_call()
        return den(x[: 2 if call.index == 0 else 1], sigma[: 2 if call.index == 0 else 1]).repeat(
            1 if call.index == 0 else 2, 1, 1, 1)

    with pytest.raises(RuntimeError, match=r"shape \(1, 3, 16, 16\).*stored features of shape \(2, 3, 16, 16\)"):
        run(shrinking, {}, shape)


def test_a_hand_written_loop_counts_its_own_calls_until_reset():
    unet, den, extra, shape = build("plain")
    x, t, t_next = torch.randn(2, *shape), torch.tensor([500, 500]), torch.tensor([400, 400])
    with torch.no_grad():
        plain_half = unet(x * 0.5, t_next).sample
        handle = fd.unet.enable_deepcache(unet, interval=2)
        full = unet(x, t).sample  # call 0: full
        shallow = unet(x * 0.5, t_next).sample  # call 1 (the timestep goes down): reuses the deep features of call 0
        handle.reset()
        again = unet(x, t).sample  # call 0 again: full
    assert torch.equal(again, full) and not torch.allclose(shallow, plain_half)


def test_disable_restores_the_unet_exactly():
    unet, den, extra, shape = build("sd")
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    plain = run(den, extra, shape)
    deepcache = fd.unet.enable_deepcache(unet, interval=2, branch=1, blend=0.3)
    skip_tuning = fd.unet.enable_skip_tuning(unet, 0.5)
    assert rel(run(den, extra, shape), plain) > 1e-3
    skip_tuning.disable()
    deepcache.disable()
    assert rel(run(den, extra, shape), plain) == 0
    assert unet.state_dict().keys() == state.keys()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in state.items())
    leftovers = [n for n, m in unet.named_modules() if "_diffusers_hook" in m.__dict__ or "forward" in m.__dict__]
    assert leftovers == []
    compiled = torch.compile(unet, backend="eager")
    x = torch.randn(2, *shape)
    torch.testing.assert_close(compiled(x, torch.tensor([3, 400]), **extra).sample,
                               unet(x, torch.tensor([3, 400]), **extra).sample)


def test_enabling_twice_and_unsupported_models_name_the_problem():
    unet, den, extra, shape = build("plain")
    handle = fd.unet.enable_deepcache(unet)
    with pytest.raises(RuntimeError, match="DeepCache is already enabled"):
        fd.unet.enable_deepcache(unet)
    handle.disable()
    handle = fd.unet.enable_skip_tuning(unet, 0.5)
    with pytest.raises(RuntimeError, match="Skip-Tuning is already enabled"):
        fd.unet.enable_skip_tuning(unet, 0.5)
    handle.disable()
    with pytest.raises(TypeError, match="needs a diffusers UNet2DModel or UNet2DConditionModel"):
        fd.unet.enable_deepcache(torch.nn.Linear(2, 2))

    class MyUpBlock(type(unet.up_blocks[0])):
        pass

    unet.up_blocks[1].__class__ = MyUpBlock
    with pytest.raises(TypeError, match=r"up_blocks\[1\] is a MyUpBlock, which fused_diffusion.unet does not support"):
        fd.unet.enable_skip_tuning(unet, 0.5)
    k_unet = build("k_upscaler")[0]
    with pytest.raises(TypeError, match=r"DeepCache does not support up_blocks\[0\] \(KCrossAttnUpBlock2D\)"):
        fd.unet.enable_deepcache(k_unet)


@pytest.mark.parametrize("kwargs, match", [
    (dict(interval=0), "interval must be an integer >= 1, got 0"),
    (dict(interval=2.5), r"interval must be an integer >= 1, got 2.5 \(float\)"),
    (dict(interval=True), r"interval must be an integer >= 1, got True \(bool\)"),
    (dict(branch=-1), "branch must be an integer >= 0, got -1"),
    (dict(branch=9), "branch 9 is beyond this U-Net: 3 levels of 2 layers allow branches 0..5"),
    (dict(mode="cubic"), "mode must be 'uniform' or 'quadratic', got 'cubic'"),
    (dict(blend=1.5), r"blend must be None or a weight in \[0, 1\], got 1.5"),
    (dict(mode="quadratic"), "mode='quadratic' needs calls"),
    (dict(mode="quadratic", calls=10, center=12), r"center must be an integer in \[0, 10\) \(a call of the run\), got 12"),
    (dict(mode="quadratic", calls=True), r"calls must be an integer >= 1, got True \(bool\)"),
    (dict(blend=True), r"blend must be a real number, got True \(bool\)"),
])
def test_bad_deepcache_arguments_name_the_argument(kwargs, match):
    unet = build("plain")[0]
    with pytest.raises((ValueError, TypeError), match=match):
        fd.unet.enable_deepcache(unet, **kwargs)
    assert "_diffusers_hook" not in unet.__dict__  # nothing half-installed


def test_bad_rho_names_the_argument():
    unet = build("plain")[0]
    with pytest.raises(ValueError, match="rho_bottom must be >= 0, got -0.5"):
        fd.unet.enable_skip_tuning(unet, -0.5)
    with pytest.raises(ValueError, match="rho_top must be finite, got nan"):
        fd.unet.enable_skip_tuning(unet, 0.5, float("nan"))


def test_features_are_in_the_graph_key_and_rho_values_are_not():
    unet, den, extra, shape = build("plain")
    sampler = fd.Sampler(den, "euler", fd.get_sigmas_karras(4, 0.05, 20.0))
    noise = torch.randn(2, *shape)
    plain = sampler.cache_key(noise)[0]
    skip_tuning = fd.unet.enable_skip_tuning(unet, 0.5)
    with_rho = sampler.cache_key(noise)
    assert with_rho[0] != plain
    skip_tuning.set_rho(0.8)
    assert sampler.cache_key(noise) == with_rho  # new values replay, no recapture
    deepcache = fd.unet.enable_deepcache(unet, interval=3)
    key3 = sampler.cache_key(noise)[0]
    deepcache.disable()
    deepcache = fd.unet.enable_deepcache(unet, interval=2)
    assert sampler.cache_key(noise)[0] not in (key3, with_rho[0])
    deepcache.disable()
    skip_tuning.disable()
    assert sampler.cache_key(noise)[0] == plain


def test_custom_unet_gets_skip_tuning_from_one_call():
    skip_tuning = fd.unet.SkipTuning(count=3, rho_bottom=0.5)
    h, skip = torch.randn(2, 4, 5, 5), torch.randn(2, 3, 5, 5)
    with ops.count_op_launches() as launches:
        out = skip_tuning.concat(1, h, skip)
    assert launches.count == 1
    torch.testing.assert_close(out, torch.cat([h, skip * 0.75], dim=1))
    with pytest.raises(IndexError, match="skip connection 3 out of range for 3 skips"):
        skip_tuning.concat(3, h, skip)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["plain", "sd"])
def test_graph_with_deepcache_and_skip_tuning_equals_eager(kind):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    unet, den, extra, shape = build(kind)
    unet.cuda()
    extra = {k: v.cuda() for k, v in extra.items()}
    fd.unet.enable_deepcache(unet, interval=3, branch=1)
    skip_tuning = fd.unet.enable_skip_tuning(unet, 0.7)
    sigmas = fd.get_sigmas_karras(6, 0.05, 20.0, device="cuda")
    noise = torch.randn(2, *shape, device="cuda") * sigmas[0]
    sampler = fd.Sampler(den, "heun", sigmas, extra_args=extra)
    eager = fd.sample_heun(den, noise, sigmas, extra_args=extra, disable=True)
    torch.testing.assert_close(sampler(noise), eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sampler(noise), eager, rtol=1e-4, atol=1e-4)
    skip_tuning.set_rho(0.9)
    eager = fd.sample_heun(den, noise, sigmas, extra_args=extra, disable=True)
    torch.testing.assert_close(sampler(noise), eager, rtol=1e-4, atol=1e-4)
    assert sampler.captures == 1


def test_feature_configs_and_arguments():
    unet = build("plain")[0]
    with pytest.raises(TypeError, match="config must be a DeepCacheConfig, got str"):
        fd.unet.apply_deepcache(unet, config="interval=3")
    with pytest.raises(TypeError, match="config must be a SkipTuningConfig, got float"):
        fd.unet.apply_skip_tuning(unet, config=0.5)
    with pytest.raises(ValueError, match="rho_bottom must be finite, got inf"):
        fd.unet.enable_skip_tuning(unet, rho_bottom=float("inf"))
    handle = fd.unet.enable_skip_tuning(unet, rho_bottom=np.float32(0.5))  # a numpy real is a number
    handle.disable()
    with pytest.raises(TypeError, match=r"count \(the number of skip connections\) must be an integer >= 1, got True"):
        fd.unet.SkipTuning(count=True, rho_bottom=0.5)
    with pytest.raises(IndexError, match="skip connection 0.5 out of range"):
        fd.unet.SkipTuning(2, 0.5).concat(0.5, torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
