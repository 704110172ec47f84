"""Installs fused_diffusion and, where torch and a compiler are available, its C++/CUDA extension
fused_diffusion._C (sources in csrc/). The extension is optional: without it, fused_diffusion._ext
JIT-builds it at first use or the dispatcher falls back to the other backends."""
import importlib.util
import sys
from pathlib import Path

from setuptools import find_packages, setup

# sources and flags live in one file shared with the JIT build; read by path, the package is not importable yet
_spec = importlib.util.spec_from_file_location("_build", Path(__file__).parent / "fused_diffusion" / "_build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)
DIGITS = ["diffusers>=0.30", "safetensors", "scikit-learn", "matplotlib"]


def _warn(message: str) -> None:
    print(f"WARNING: fused_diffusion: {message}", file=sys.stderr)


def extension_build() -> dict:
    """setup() arguments building fused_diffusion._C, or none when torch is not importable here."""
    try:
        import torch  # noqa: F401 - the extension builds against the installed torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _warn("torch is not importable at setup time, installing without the C++ extension "
              "(use `pip install --no-build-isolation` to build it)")
        return {}

    class OptionalBuildExtension(BuildExtension):
        """BuildExtension that turns a failed build (no compiler, no CUDA toolkit) into one warning."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001 - any build failure leaves a working pure-Python install
                lines = str(e).strip().splitlines()
                _warn(f"building the C++ extension failed ({lines[-1] if lines else type(e).__name__}); "
                      "installing without it, fused_diffusion._ext will JIT-build it or fall back to torch")

    if build.with_cuda():
        extension = CUDAExtension(
            "fused_diffusion._C",
            build.sources(cuda=True),
            define_macros=[(build.CUDA_MACRO, None)],
            extra_compile_args={"cxx": build.CXX_FLAGS, "nvcc": build.NVCC_FLAGS},
            extra_link_args=build.LINK_FLAGS,
        )
    else:
        extension = CppExtension("fused_diffusion._C", build.sources(), extra_compile_args=build.CXX_FLAGS,
                                 extra_link_args=build.LINK_FLAGS)
    return {"ext_modules": [extension], "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}}


setup(
    name="fused_diffusion",
    version="0.1.0",
    description="Fused-kernel, CUDA-graph-captured samplers for diffusion and flow models",
    packages=find_packages(include=["fused_diffusion", "fused_diffusion.*"]),
    python_requires=">=3.10",
    package_data={"fused_diffusion.zoo": ["weights/*.safetensors"]},
    install_requires=["torch>=2.4", "numpy", "tqdm"],
    extras_require={
        # the shipped digits model, its metric, training and the picture demo (data ship inside scikit-learn)
        "digits": DIGITS,
        # transformers: a CLIPTextModel from a config for the Stable-Diffusion pipeline tests (no download)
        "test": ["pytest", "hypothesis", "scipy", "torchsde", "triton; platform_system == 'Linux'", "transformers",
                 *DIGITS],
        # Brownian-tree noise, the default of the DPM++ SDE samplers (as in k-diffusion)
        "sde": ["torchsde"],
        "diffusers": ["diffusers>=0.30", "safetensors"],
        "bench": [*DIGITS, "nvidia-ml-py"],
        # the documentation site: mkdocs build --strict (pages in docs/, API pages from the docstrings)
        "docs": ["mkdocs-material", "mkdocstrings[python]"],
    },
    **extension_build(),
)
