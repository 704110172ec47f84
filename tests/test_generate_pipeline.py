"""`python -m fused_diffusion generate --pipeline DIR`: a tiny Stable Diffusion pipeline written by save_pretrained
(tokenizer included, a vocabulary the test writes) sampled per (prompt, image) with a seed each: one PNG per image,
a manifest, the same bytes from 1 and 2 gloo processes, also after a killed run resumes; another configuration's
folder and bad arguments refused before anything is written."""
from __future__ import annotations

import json
import os
import signal
import socket
import string
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from fused_diffusion import __main__ as cli  # noqa: E402
from fused_diffusion import sample_folder  # noqa: E402
from test_generate import descendants  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
PROMPTS = "a cat\na dog on a mat\n"
ITEMS = [f"image_{k:06d}.png" for k in range(4)]  # 2 prompts x 2 images


def tiny_tokenizer(folder: Path) -> "transformers.CLIPTokenizer":
    """A CLIP tokenizer over single letters (no merges), written to `folder`."""
    letters = string.ascii_lowercase
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c: 2 + i for i, c in enumerate(letters)},
             **{c + "</w>": 28 + i for i, c in enumerate(letters)}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16,
                                      pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, sample_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=54,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tiny_tokenizer(root / "vocabulary"), unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(root / "pipe")
    (root / "prompts.txt").write_text(PROMPTS)
    return root


def arguments(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--pipeline", str(root / "pipe"), "--prompts", str(root / "prompts.txt"), "--out", str(out),
            "--steps", "3", "--images-per-prompt", "2", "--seed", "5", "--threads", "1", "--guidance", "3.0", *extra]


def run_cli(*argv: str) -> None:
    threads, saved = torch.get_num_threads(), sys.argv
    sys.argv = ["python -m fused_diffusion", "generate", *argv]
    try:
        cli.main()
    finally:
        sys.argv = saved
        torch.set_num_threads(threads)


def torchrun(*argv: str, env: dict | None = None, wait: bool = True) -> subprocess.Popen:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "fused_diffusion", "--", "generate", *argv]
    proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if wait:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output
    return proc


def images(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ITEMS}


@pytest.fixture(scope="module")
def reference(pipeline_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generate") / "reference"
    run_cli(*arguments(pipeline_folder, out))
    return out


def test_one_process_writes_an_image_per_prompt_and_index_with_its_seed(reference, pipeline_folder):
    assert sorted(p.name for p in reference.iterdir()) == sorted(["manifest.json", *ITEMS])
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["config"]["prompts"] == ["a cat", "a dog on a mat"]
    assert [(i["prompt"], i["image"], i["seed"]) for i in manifest["items"]] == [
        (0, 0, 5 * 1_000_003), (0, 1, 5 * 1_000_003 + 1), (1, 0, 5 * 1_000_003 + 2), (1, 1, 5 * 1_000_003 + 3)]
    # each image is the pipeline's own (accelerated) image for its prompt and seed
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(pipeline_folder / "pipe", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    own = pipe("a dog on a mat", num_inference_steps=3, guidance_scale=3.0, output_type="np",
               generator=torch.Generator().manual_seed(5 * 1_000_003 + 3)).images[0]
    from PIL import Image
    import numpy as np

    ours = np.asarray(Image.open(reference / ITEMS[3])).astype(np.float32) / 255
    assert abs(ours - own).max() <= 1 / 255 + 1e-6  # 8-bit rounding of the same image
    assert len(set(images(reference).values())) == 4


def test_two_gloo_processes_give_the_same_bytes_also_after_a_kill(reference, pipeline_folder, tmp_path):
    out = tmp_path / "out"
    torchrun(*arguments(pipeline_folder, out))
    assert images(out) == images(reference)
    assert (out / "manifest.json").read_text() == (reference / "manifest.json").read_text()
    resumed = tmp_path / "resumed"
    proc = torchrun(*arguments(pipeline_folder, resumed), env={sample_folder.PAUSE_ENV: "1"}, wait=False)
    deadline = time.monotonic() + 240
    while sum((resumed / name).exists() for name in ITEMS) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    for pid in [*descendants(proc.pid), proc.pid]:  # torchrun's workers run in sessions of their own
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    run_cli(*arguments(pipeline_folder, resumed))  # resumed by one process
    assert images(resumed) == images(reference)


def test_another_configuration_and_bad_arguments_are_refused_touching_nothing(reference, pipeline_folder, tmp_path,
                                                                             capsys):
    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(*argv)
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    before = {p.name: p.read_bytes() for p in reference.iterdir()}
    base = arguments(pipeline_folder, reference)
    assert "another configuration (differing: " in refused(*base[:-6], "--steps", "4", *base[-4:])
    assert {p.name: p.read_bytes() for p in reference.iterdir()} == before
    out = str(tmp_path / "new")
    assert "argument --pipeline: " in refused("--pipeline", str(tmp_path), "--prompts", str(pipeline_folder /
                                                                                            "prompts.txt"), "--out", out)
    assert "argument --prompts: --pipeline needs a prompts file" in refused("--pipeline", str(pipeline_folder / "pipe"),
                                                                           "--out", out)
    assert "argument --num/-n: required with --model" in refused("--out", out)
    assert "argument --steps" not in refused("--pipeline", str(pipeline_folder / "pipe"), "--prompts",
                                             str(pipeline_folder / "prompts.txt"), "--out", out, "--num", "3")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert "holds no prompt" in refused("--pipeline", str(pipeline_folder / "pipe"), "--prompts",
                                        str(tmp_path / "empty.txt"), "--out", out)
    assert not Path(out).exists()
