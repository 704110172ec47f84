"""`python -m fused_diffusion generate`: the files it writes, resuming after a killed run (1 and 2 processes), bit-equal
shards for 1 and 2 gloo processes, refusing another configuration's folder and bad arguments before writing."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import fused_diffusion as fd
from fused_diffusion import __main__ as cli
from fused_diffusion import generate, sample_folder

# 12 samples in shards of 4 (rank 0 of 2 takes shards 0 and 2, rank 1 shard 1), batches of 3 so a shard takes
# two sampler calls of different sizes
SMALL = ["--num", "12", "--shard-size", "4", "--calls", "3", "--batch", "3", "--seed", "7", "--threads", "1"]
SHARDS = [f"shard_{k:05d}.safetensors" for k in range(3)]


def run_cli(*argv: str) -> None:
    """The command in this process (as `python -m fused_diffusion generate ...`), restoring torch's thread count."""
    threads, saved = torch.get_num_threads(), sys.argv
    sys.argv = ["python -m fused_diffusion", "generate", *argv]
    try:
        cli.main()
    finally:
        sys.argv = saved
        torch.set_num_threads(threads)


def torchrun(out: Path, *extra: str, env: dict | None = None, wait: bool = True) -> subprocess.Popen:
    """The command on 2 gloo processes (one thread each), in its own session so a test can kill all of it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "fused_diffusion", "--", "generate", *SMALL[:-2], "--out", str(out), *extra]
    proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if wait:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
    return proc


def shards(out: Path) -> list[torch.Tensor]:
    return [load_file(out / name)["images"] for name in SHARDS]


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in the folder with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir())}


def assert_same_shards(out: Path, reference: Path) -> None:
    for got, expected in zip(shards(out), shards(reference), strict=True):
        assert torch.equal(got, expected)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted 1-process run with pictures and the metric."""
    out = tmp_path_factory.mktemp("generate") / "reference"
    run_cli(*SMALL, "--out", str(out), "--png", "--metrics")
    return out


def test_one_process_writes_shards_manifest_pictures_and_metric(reference):
    names = sorted(p.name for p in reference.iterdir())
    pictures = [name.replace(".safetensors", ".png") for name in SHARDS]
    assert names == sorted(["manifest.json", "metrics.json", *SHARDS, *pictures])
    manifest = json.loads((reference / "manifest.json").read_text())
    config = manifest["config"]
    assert {k: config[k] for k in ("model", "num", "solver", "calls", "steps", "shard_size", "seed", "batch")} == {
        "model": "digits", "num": 12, "solver": "dpmpp_2m", "calls": 3, "steps": 3, "shard_size": 4, "seed": 7,
        "batch": 3}
    assert manifest["shards"] == [{"index": k, "file": SHARDS[k], "seed": 7 * 1_000_003 + k, "samples": 4}
                                  for k in range(3)]
    assert set(manifest["versions"]) == {"fused_diffusion", "torch", "diffusers"}
    for k, name in enumerate(SHARDS):
        with safe_open(str(reference / name), "pt") as f:
            assert f.metadata()["index"] == str(k) and f.metadata()["seed"] == str(7 * 1_000_003 + k)
            images = f.get_tensor("images")
        assert images.shape == (4, 1, 8, 8) and images.dtype == torch.float32
        assert images.min() >= -1 and images.max() <= 1
    assert len({tuple(t.flatten().tolist()) for t in shards(reference)}) == 3  # each shard its own noise
    metrics = json.loads((reference / "metrics.json").read_text())
    assert math.isfinite(metrics["fd"]) and metrics["fd"] > 0 and metrics["samples"] == 12
    assert metrics["fd"] == pytest.approx(fd.metrics.frechet_distance(torch.cat(shards(reference))))


def test_rerun_skips_every_finished_file(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = snapshot(out)
    run_cli(*SMALL, "--out", str(out), "--png")
    assert snapshot(out) == before


def test_resume_after_a_killed_run_matches_the_uninterrupted_one(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / SHARDS[1]).unlink()  # killed before shard 1 was moved into place, its temporary file half written
    (out / f".{SHARDS[1]}.tmp").write_bytes(b"\x00" * 100)
    data = (out / SHARDS[2]).read_bytes()
    (out / SHARDS[2]).write_bytes(data[: len(data) // 2])  # a truncated shard (copied by hand, say) is not done
    kept = (out / SHARDS[0]).stat().st_mtime_ns
    run_cli(*SMALL, "--out", str(out))
    assert_same_shards(out, reference)
    assert (out / SHARDS[0]).stat().st_mtime_ns == kept


def test_stochastic_solver_shards_are_reproducible(tmp_path):
    args = [*SMALL, "--solver", "euler_ancestral"]
    run_cli(*args, "--out", str(tmp_path / "a"))
    (tmp_path / "a" / SHARDS[1]).unlink()
    run_cli(*args, "--out", str(tmp_path / "a"))
    run_cli(*args, "--out", str(tmp_path / "b"))
    assert_same_shards(tmp_path / "a", tmp_path / "b")


def test_two_gloo_processes_give_the_one_process_shards(reference, tmp_path):
    proc = torchrun(tmp_path / "out", "--metrics")
    for name in SHARDS:  # byte for byte (metadata in a fixed order), not only the tensors
        assert (tmp_path / "out" / name).read_bytes() == (reference / name).read_bytes()
    assert (tmp_path / "out" / "manifest.json").read_text() == (reference / "manifest.json").read_text()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["fd"] == pytest.approx(
        json.loads((reference / "metrics.json").read_text())["fd"])
    assert proc.returncode == 0


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (torchrun starts its workers in sessions of their own)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_killed_two_process_run_resumes_to_the_one_process_shards(reference, tmp_path):
    out = tmp_path / "out"
    # each worker sleeps after its first shard: shards 0 and 1 exist, shard 2 (rank 0's second) does not
    proc = torchrun(out, env={sample_folder.PAUSE_ENV: "1"}, wait=False)
    deadline = time.monotonic() + 120
    while not all((out / name).exists() for name in SHARDS[:2]):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    for pid in [*descendants(proc.pid), proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    assert not (out / SHARDS[2]).exists()
    torchrun(out)
    assert_same_shards(out, reference)


def test_another_configuration_is_refused_touching_nothing(reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = snapshot(out)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*SMALL[:4], "--calls", "4", *SMALL[6:], "--out", str(out), "--png", "--metrics")
    assert exit_info.value.code == 2
    assert "another configuration (differing: calls: 3 there, 4 now; steps: 3 there" in capsys.readouterr().err
    assert snapshot(out) == before


@pytest.mark.parametrize("change, message", [
    (["--model", "cifar"], "argument --model: invalid choice: 'cifar' (choose from "),
    (["--solver", "ddpm"], "argument --solver: invalid choice: 'ddpm' (choose from "),
    (["--num", "0"], "argument --num/-n: must be an integer >= 1, got '0'"),
    (["--calls", "0"], "argument --calls: must be an integer >= 1, got '0'"),
    (["--batch", "-2"], "argument --batch: must be an integer >= 1, got '-2'"),
    (["--solver", "heun", "--calls", "4"], "argument --calls: heun makes 2 model calls per step (1 in the last), so "
                                           "--calls must be an odd number (1, 3, 5, ...), got 4"),
    (["--seed", str(2**63)], "argument --seed: must be an integer in [0, 9223372036854775807], got"),
    (["--seed", str(2**63 - 1)], "argument --seed: must be at most"),
    (["--num", "10000000", "--shard-size", "1"], "argument --num: 10000000 samples in shards of 1 make 10000000 "
                                                 "shards; at most 1000003"),
    (["--calls", "10000000"], "argument --calls: 10000000 calls of dpmpp_2m cannot be sampled: "),
    (["--num", "1", "--metrics"], "argument --num: --metrics fits a Gaussian, which needs at least 2 samples, got 1"),
])
def test_bad_arguments_are_refused_before_writing(change, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*SMALL, *change, "--out", str(out))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    if "invalid choice" in message:  # the known names are listed
        assert all(name in error for name in (["digits"] if "model" in message else generate.SOLVERS))
    assert not out.exists()


class CountingModel:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        return x * 0.5


@pytest.mark.parametrize("solver", sorted(generate.SOLVERS))
def test_the_steps_for_calls_make_those_model_calls_in_the_sampler(solver):
    facts = fd.solvers.get_solver(solver)
    for calls in range(1, 8):
        steps = facts.steps_for(calls)
        if facts.calls(steps) != calls:
            continue
        model = CountingModel()
        fd.Sampler(model, solver, fd.get_sigmas_karras(steps, 0.01, 80.0), cuda_graph=False)(torch.randn(2, 4) * 80.0)
        assert model.calls == calls
