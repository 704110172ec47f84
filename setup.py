"""Installs fused_diffusion and, where torch and a compiler are available, its C++/CUDA extension
fused_diffusion._C (sources in csrc/). The extension is optional: without it, fused_diffusion._ext
JIT-builds it at first use or the dispatcher falls back to the other backends."""
import sys

from setuptools import find_packages, setup

CSRC = ["csrc/lincomb.cpp", "csrc/concat.cpp", "csrc/bindings.cpp"]
CUDA_SRC = ["csrc/cuda/lincomb.cu", "csrc/cuda/concat.cu"]
DIGITS = ["diffusers>=0.30", "safetensors", "scikit-learn", "matplotlib"]


def _warn(message: str) -> None:
    print(f"WARNING: fused_diffusion: {message}", file=sys.stderr)


def extension_build() -> dict:
    """setup() arguments building fused_diffusion._C, or none when torch is not importable here."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
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

    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if with_cuda:
        extension = CUDAExtension(
            "fused_diffusion._C",
            CSRC + CUDA_SRC,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": ["-O3", *openmp], "nvcc": ["-O3"]},
            extra_link_args=openmp,
        )
    else:
        extension = CppExtension(
            "fused_diffusion._C", CSRC, extra_compile_args=["-O3", *openmp], extra_link_args=openmp
        )
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
        "test": ["pytest", "scipy", "triton; platform_system == 'Linux'", *DIGITS],
        "diffusers": ["diffusers>=0.30", "safetensors"],
        "bench": [*DIGITS, "nvidia-ml-py"],
    },
    **extension_build(),
)
