"""Where the shipped weights live: safetensors files (fused_diffusion.files) inside the package."""
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
