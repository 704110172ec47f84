"""What the tests and the benches compare the library against, as `torch.testing` is for torch: not part of the
sampling API, and nothing here is imported by the rest of the package.

- `reference_samplers`: the samplers re-stated as plain loops (k-diffusion 0.1.1's code, AMED's, DDIM's and iPNDM's
  from their papers and code), independent of the library's solvers.
- `tiny_pipelines`: tiny random diffusers pipelines (SD, SDXL, SD3, Flux) built offline from configs; needs
  diffusers and transformers (`pip install fused_diffusion[test]`).

Import the submodule you need (`from fused_diffusion.testing import reference_samplers`); this package imports
neither, so that one's dependencies are not the other's.
"""
