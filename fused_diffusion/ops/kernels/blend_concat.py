"""blend_concat: DeepCache's blend fed straight into Skip-Tuning's concat, in one pass:
cat([(w * fresh + (1 - w) * cached) * b, skip * rho], dim=1). The kernel is skip_concat's, with BLEND on.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .skip_concat import launch_concat


def blend_concat_triton(
    fresh: Tensor, cached: Tensor, w: Tensor, skip: Tensor, rho: Tensor, b: Optional[Tensor], out: Tensor
) -> Tensor:
    """Launcher for blend_concat; see skip_concat.launch_concat for the argument contract."""
    return launch_concat(fresh, cached, w, skip, rho, b, out)
