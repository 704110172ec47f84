"""Shared by the solver tests: the analytic Gaussian mixture's noise range, relative error, moving the shared
mixture fixture (tests/conftest.py: `gmm`, `noise`) to a device without moving it for the other tests."""
import copy

import torch

SIGMA_MAX, SIGMA_MIN = 20.0, 0.01


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def on(gmm, device):
    """The mixture on `device` without moving the shared fixture (nn.Module.to works in place)."""
    return gmm if gmm.means.device == torch.device(device) else copy.deepcopy(gmm).to(device)
