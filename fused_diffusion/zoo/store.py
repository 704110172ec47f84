"""The shipped weights: safetensors files in zoo/weights/ with JSON metadata (config, schedule, training info)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

WEIGHTS_DIR = Path(__file__).parent / "weights"


def save_weights(path: str | Path, state_dict: dict[str, Tensor], **metadata: Any) -> None:
    """Writes tensors as safetensors with each metadata value stored as JSON (the U-Net: config, schedule, info)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata with JSON decoded) of a safetensors file; a missing or unreadable file raises an error
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path} (reinstall fused_diffusion, or retrain with "
                                f"`python -m fused_diffusion train`)")
    try:
        from safetensors import safe_open
    except ImportError as e:
        raise ImportError("the shipped models are safetensors files: pip install 'fused_diffusion[digits]'") from e
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for each kind of damage
        raise RuntimeError(f"cannot read model weights {path}: {type(e).__name__}: {e} (the file is corrupt or not "
                           f"a safetensors file; reinstall fused_diffusion)") from e
    return tensors, metadata
