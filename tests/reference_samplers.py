"""Independent re-statements of the papers' samplers, written as plain loops (k-diffusion 0.1.1's code for the
samplers it has; AMED's and DDIM's from their papers; iPNDM's from the AMED code), for the solver tests. Nothing
here imports the library."""
import math

import torch


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise):
    """k-diffusion's churn preamble: (x_hat, sigma_hat); draws noise every step even when gamma = 0."""
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    eps = torch.randn_like(x) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def euler(model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def heun(model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


def dpm_2(model, x, sigmas, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


def euler_ancestral(model, x, sigmas, eta=1.0, s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_from, sigma_to = sigmas[i], sigmas[i + 1]
        sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + torch.randn_like(x) * s_noise * sigma_up
    return x


def dpmpp_2m(model, x, sigmas):
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()  # noqa: E731
    t_fn = lambda sigma: sigma.log().neg()  # noqa: E731
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def amed(model, x, sigmas, r=0.5, afs=True, scale_dir=1.0, scale_time=1.0):
    """AMED-Solver, Zhou et al. 2024 Alg. 1 (t = sigma), with AFS on the first step and Euler to sigma = 0."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        if afs and i == 0:
            d_cur = x / (1 + t_cur**2).sqrt()
        else:
            d_cur = (x - model(x, t_cur * s_in)) / t_cur
        if t_next == 0:
            x = x + (t_next - t_cur) * d_cur
            continue
        t_mid = (t_next**r) * (t_cur ** (1 - r))
        x_mid = x + (t_mid - t_cur) * d_cur
        d_mid = (x_mid - model(x_mid, scale_time * t_mid * s_in)) / t_mid
        x = x + scale_dir * (t_next - t_cur) * d_mid
    return x


def ipndm(model, x, sigmas, max_order=4, afs=False, predictor=None, scale_dir=1.0, scale_time=1.0):
    """iPNDM (Zhang & Chen 2023) and its AMED-Plugin (Zhou et al. 2024), as ipndm_sampler in zju-pi/diff-sampler's
    amed-solver-main/solvers_amed.py: Adams-Bashforth on d = (x - D) / t over a buffer of past derivatives (the
    plugin pushes both d and d_mid), order min(max_order, len(buffer) + 1). Differences from that code: the buffer
    keeps max_order - 1 entries by slicing (so max_order = 1 keeps none instead of failing), AFS is tied to step 0,
    and a step to t = 0 is the plain step (no midpoint). predictor(x, t[B], t_next[B], analytic) -> r or
    (r, scale_dir, scale_time), per sample."""
    s_in = x.new_ones([x.shape[0]])
    per_sample = lambda v: v.reshape(-1, *[1] * (x.dim() - 1)) if torch.is_tensor(v) and v.dim() else v  # noqa: E731
    buffer = []

    def multistep(x, dt, d):
        order = min(max_order, len(buffer) + 1)
        if order == 1:
            return x + dt * d
        if order == 2:
            return x + dt * (3 * d - buffer[-1]) / 2
        if order == 3:
            return x + dt * (23 * d - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        return x + dt * (55 * d - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24

    def push(d):
        buffer.append(d)
        while len(buffer) > max_order - 1:
            buffer.pop(0)

    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        use_afs = afs and i == 0
        if use_afs:
            d_cur = x / (1 + t_cur**2).sqrt()
        else:
            d_cur = (x - model(x, t_cur * s_in)) / t_cur
        if predictor is None or t_next == 0:
            x_next = multistep(x, t_next - t_cur, d_cur)
            push(d_cur)
            x = x_next
            continue
        out = predictor(x, t_cur * s_in, t_next * s_in, use_afs)
        r, sd, st = out if isinstance(out, tuple) else (out, scale_dir, scale_time)
        r, sd, st = per_sample(r), per_sample(sd), per_sample(st)
        t_mid = (t_next**r) * (t_cur ** (1 - r))
        x_mid = multistep(x, t_mid - t_cur, d_cur)
        push(d_cur)
        d_mid = (x_mid - model(x_mid, (st * t_mid).reshape(-1) * s_in)) / t_mid
        x = multistep(x_mid, sd * (t_next - t_mid), d_mid)
        push(d_mid)
    return x


def consistency(model, x, sigmas, sigma_min=0.002):
    """Consistency Models Alg. 1 (a final 0: the last call's x0 is the sample); a schedule ending above 0 re-noises
    to its last sigma and stops there."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x0 = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            return x0
        x = x0 + (sigmas[i + 1] ** 2 - sigma_min**2).sqrt() * torch.randn_like(x0)
    return x


def ddim(eps_model, x, alphas_cumprod, timesteps, eta=0.0, final_alpha=1.0, generator=None):
    """Song et al. 2021 eq. 12 with sigma_t(eta) of eq. 16, previous timestep t - T // n (diffusers' convention)."""
    ac = alphas_cumprod.double()
    step = len(ac) // len(timesteps)
    for t in timesteps.tolist():
        eps = eps_model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        a_t = ac[t]
        a_prev = ac[t - step] if t - step >= 0 else torch.tensor(final_alpha, dtype=torch.float64)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
        if eta > 0:
            x = x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


def shortcut(velocity_model, x, steps):
    d = 1.0 / steps
    for k in range(steps):
        t = torch.full((x.shape[0],), k * d, dtype=x.dtype)
        x = x + d * velocity_model(x, t, torch.full_like(t, d))
    return x


def log_slope(steps, errors):
    """Least-squares slope of -log(error) against log(steps): the measured order of convergence."""
    xs, ys = [math.log(n) for n in steps], [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
