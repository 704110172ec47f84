"""Independent re-statements of the papers' samplers, written as plain loops (k-diffusion 0.1.1's code for the
samplers it has; AMED's and DDIM's from their papers; iPNDM's from the AMED code), for the solver tests and
bench/bench_samplers.py. Nothing here imports the library."""
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


def euler_ancestral(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None):
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_from, sigma_to = sigmas[i], sigmas[i + 1]
        sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
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


# ---- k-diffusion 0.1.1 (k_diffusion/sampling.py): the remaining samplers, same random draws from the global
# generator in the same order and the same dtypes in the arithmetic (DPMSolver's float32 time grid included).


def default_noise_sampler(x):
    """k-diffusion's default_noise_sampler: randn_like of the initial x, whatever the interval."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def ancestral_step(sigma_from, sigma_to, eta=1.0):
    """k-diffusion's get_ancestral_step: (sigma_down, sigma_up); eta = 0 gives (sigma_to, 0.)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def t_of(sigma):
    return sigma.log().neg()


def sigma_of(t):
    return t.neg().exp()


class BatchedBrownianTree:
    """k-diffusion's wrapper of torchsde.BrownianTree (w0 = 0): one tree for the whole x, or one per batch item
    (of x[0]'s shape) when seed is a list. seed None draws torch.randint(0, 2**63 - 1, []) from the global RNG."""

    def __init__(self, x, t0, t1, seed=None):
        import torchsde

        t0, t1, self.sign = self.sort(t0, t1)
        w0 = torch.zeros_like(x)
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        try:
            assert len(seed) == x.shape[0]
            w0, self.batched = w0[0], True
        except TypeError:
            seed, self.batched = [seed], False
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seed]

    @staticmethod
    def sort(a, b):
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, t0, t1):
        t0, t1, sign = self.sort(t0, t1)
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * (self.sign * sign)
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """k-diffusion's BrownianTreeNoiseSampler: (W(t1) - W(t0)) / sqrt|t1 - t0| on t = transform(sigma)."""

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda x: x):
        self.transform = transform
        t0, t1 = self.transform(torch.as_tensor(sigma_min)), self.transform(torch.as_tensor(sigma_max))
        self.tree = BatchedBrownianTree(x, t0, t1, seed)

    def __call__(self, sigma, sigma_next):
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()


def brownian_noise_sampler(x, sigmas):
    """The SDE samplers' default: a Brownian tree over [smallest positive sigma, largest sigma]."""
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max())


def dpm_2_ancestral(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None):
    """k-diffusion's sample_dpm_2_ancestral: DPM-Solver-2 (midpoint in log sigma) down to sigma_down, then noise
    sigma_up. The noise is only on the DPM-2 branch: a step whose sigma_down is 0 adds none, even above sigma = 0."""
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def lms_coeff(order, t, i, j):
    """k-diffusion's linear_multistep_coeff: the integral over [t_i, t_i+1] of the Lagrange basis polynomial of
    t_i-j on t_i, ..., t_i-order+1 (t a numpy array of the sigmas), by scipy's quad with epsrel 1e-4."""
    from scipy import integrate

    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def lms(model, x, sigmas, order=4):
    """k-diffusion's sample_lms: linear multistep (Adams-Bashforth in sigma) on d, order ramping up from 1."""
    s_in = x.new_ones([x.shape[0]])
    sigmas_np = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        ds.append(to_d(x, sigmas[i], model(x, sigmas[i] * s_in)))
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [lms_coeff(cur_order, sigmas_np, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def dpmpp_2s_ancestral(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None):
    """k-diffusion's sample_dpmpp_2s_ancestral: DPM-Solver++(2S) (Lu et al. 2022b) down to sigma_down (Euler when it
    is 0), then noise sigma_up whenever sigma_i+1 > 0."""
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = t_of(sigmas[i]), t_of(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (sigma_of(s) / sigma_of(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, sigma_of(s) * s_in)
            x = (sigma_of(t_next) / sigma_of(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def dpmpp_sde(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2):
    """k-diffusion's sample_dpmpp_sde: DPM-Solver++ (stochastic), an ancestral step to t + r h then one to t_i+1 from
    the weighted denoised values, Euler to sigma = 0. The Brownian tree is built (one randint draw) even at eta = 0,
    and queried at sigma_of(t_of(sigma)), not sigma itself."""
    noise_sampler = brownian_noise_sampler(x, sigmas) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = t_of(sigmas[i]), t_of(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = ancestral_step(sigma_of(t), sigma_of(s), eta)
        s_ = t_of(sd)
        x_2 = (sigma_of(s_) / sigma_of(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise_sampler(sigma_of(t), sigma_of(s)) * s_noise * su
        denoised_2 = model(x_2, sigma_of(s) * s_in)
        sd, su = ancestral_step(sigma_of(t), sigma_of(t_next), eta)
        t_next_ = t_of(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (sigma_of(t_next_) / sigma_of(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise_sampler(sigma_of(t), sigma_of(t_next)) * s_noise * su
    return x


def dpmpp_2m_sde(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="midpoint"):
    """k-diffusion's sample_dpmpp_2m_sde: DPM-Solver++(2M) SDE, the last step to sigma = 0 returning the denoised
    value. The Brownian tree is built (one randint draw) even at eta = 0; a single step [sigma, 0] raises
    UnboundLocalError (h), as there."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    noise_sampler = brownian_noise_sampler(x, sigmas) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


def dpmpp_3m_sde(model, x, sigmas, eta=1.0, s_noise=1.0, noise_sampler=None):
    """k-diffusion's sample_dpmpp_3m_sde: DPM-Solver++(3M) SDE (orders 1, 2, then 3), the last step to sigma = 0
    returning the denoised value; the Brownian tree is built (one randint draw) even at eta = 0."""
    noise_sampler = brownian_noise_sampler(x, sigmas) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    denoised_1, denoised_2, h_1, h_2 = None, None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                d = (denoised - denoised_1) / (h_1 / h)
                x = x + (h_eta.neg().expm1() / h_eta + 1) * d
            if eta:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# DPM-Solver (Lu et al. 2022) as k-diffusion's DPMSolver, on t = -log sigma with eps = (x - D) / sigma. eps_fn(x, t)
# calls the model; eps at t is passed in (k-diffusion's eps cache), and so is eps_r1 when already computed at r1.


def dpm_solver_1(x, t, t_next, eps):
    return x - sigma_of(t_next) * (t_next - t).expm1() * eps


def dpm_solver_2(eps_fn, x, t, t_next, eps, r1=1 / 2):
    """DPM-Solver-2 step: (x_next, eps_r1)."""
    h = t_next - t
    s1 = t + r1 * h
    eps_r1 = eps_fn(x - sigma_of(s1) * (r1 * h).expm1() * eps, s1)
    x_2 = x - sigma_of(t_next) * h.expm1() * eps - sigma_of(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
    return x_2, eps_r1


def dpm_solver_3(eps_fn, x, t, t_next, eps, r1=1 / 3, r2=2 / 3, eps_r1=None):
    h = t_next - t
    s1, s2 = t + r1 * h, t + r2 * h
    if eps_r1 is None:
        eps_r1 = eps_fn(x - sigma_of(s1) * (r1 * h).expm1() * eps, s1)
    u2 = (
        x
        - sigma_of(s2) * (r2 * h).expm1() * eps
        - sigma_of(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
    )
    eps_r2 = eps_fn(u2, s2)
    return x - sigma_of(t_next) * h.expm1() * eps - sigma_of(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def dpm_eps_fn(model):
    return lambda x, t: (x - model(x, sigma_of(t) * x.new_ones([x.shape[0]]))) / sigma_of(t)


def dpm_fast(model, x, sigma_min, sigma_max, n, eta=0.0, s_noise=1.0, noise_sampler=None):
    """k-diffusion's sample_dpm_fast (DPMSolver.dpm_solver_fast): floor(n / 3) + 1 steps uniform in t, all
    DPM-Solver-3 but the last (order n % 3, or 2 then 1 when 3 divides n): n model calls. The grid is float32
    (torch.tensor of the Python sigmas) whatever x's dtype; every step draws noise, times 0. when eta = 0."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    eps_fn = dpm_eps_fn(model)
    t_start, t_end = t_of(torch.tensor(sigma_max)), t_of(torch.tensor(sigma_min))
    if not t_end > t_start and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        if eta:
            sd, su = ancestral_step(sigma_of(t), sigma_of(t_next), eta)
            t_next_ = torch.minimum(t_end, t_of(sd))
            su = (sigma_of(t_next) ** 2 - sigma_of(t_next_) ** 2) ** 0.5
        else:
            t_next_, su = t_next, 0.0
        eps = eps_fn(x, t)
        if order == 1:
            x = dpm_solver_1(x, t, t_next_, eps)
        elif order == 2:
            x, _ = dpm_solver_2(eps_fn, x, t, t_next_, eps)
        else:
            x = dpm_solver_3(eps_fn, x, t, t_next_, eps)
        x = x + su * s_noise * noise_sampler(sigma_of(t), sigma_of(t_next))
    return x


def dpm_adaptive(model, x, sigma_min, sigma_max, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0,
                 icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None,
                 return_info=False):
    """k-diffusion's sample_dpm_adaptive (DPMSolver.dpm_solver_adaptive): embedded DPM-Solver-1/2 (order 2) or -2/3
    (order 3, the 2 at r1 = 1/3 sharing eps_r1) with k-diffusion's PID step-size controller on the scaled error
    norm; float32 t, h a Python float. Each accepted step draws noise, times 0. when eta = 0."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    eps_fn = dpm_eps_fn(model)
    t_start, t_end = t_of(torch.tensor(sigma_max)), t_of(torch.tensor(sigma_min))
    if order not in {2, 3}:
        raise ValueError("order should be 2 or 3")
    forward = t_end > t_start
    if not forward and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    atol, rtol = torch.tensor(atol), torch.tensor(rtol)
    # PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety, eps=1e-8)
    h = abs(h_init) * (1 if forward else -1)
    pid_order = 1.5 if eta else order
    b1, b2, b3 = (pcoeff + icoeff + dcoeff) / pid_order, -(pcoeff + 2 * dcoeff) / pid_order, dcoeff / pid_order
    errs = []
    s, x_prev = t_start, x
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
        t = torch.minimum(t_end, s + h) if forward else torch.maximum(t_end, s + h)
        if eta:
            sd, su = ancestral_step(sigma_of(s), sigma_of(t), eta)
            t_ = torch.minimum(t_end, t_of(sd))
            su = (sigma_of(t) ** 2 - sigma_of(t_) ** 2) ** 0.5
        else:
            t_, su = t, 0.0
        eps = eps_fn(x, s)
        if order == 2:
            x_low = dpm_solver_1(x, s, t_, eps)
            x_high, _ = dpm_solver_2(eps_fn, x, s, t_, eps)
        else:
            x_low, eps_r1 = dpm_solver_2(eps_fn, x, s, t_, eps, r1=1 / 3)
            x_high = dpm_solver_3(eps_fn, x, s, t_, eps, eps_r1=eps_r1)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        inv_error = 1 / (float(error) + 1e-8)
        errs = errs or [inv_error] * 3
        errs[0] = inv_error
        factor = 1 + math.atan(errs[0] ** b1 * errs[1] ** b2 * errs[2] ** b3 - 1)
        h *= factor
        if factor >= accept_safety:
            errs[2], errs[1] = errs[1], errs[0]
            x_prev = x_low
            x = x_high + su * s_noise * noise_sampler(sigma_of(s), sigma_of(t))
            s = t
            info["n_accept"] += 1
        else:
            info["n_reject"] += 1
        info["nfe"] += order
        info["steps"] += 1
    return (x, info) if return_info else x
