"""bench/gpu_check.sh rehearsed on the CPU, so the first minutes on a GPU are not spent on a script bug.

With GPU_CHECK_DRY_RUN=1 the script prints each command a stage would run ("+ " and the command, shell-quoted)
instead of running it. Every stage is run that way here and its commands checked: the pytest selections name test
files that exist and registered markers; each bench script exists and its argument parser takes the options given
(the script runs with them followed by --help, in this process, so a wrong choice or type fails, and an unknown
option is caught by its absence from the help text); the quick stage builds, runs every gpu test, one
op-bandwidth case and one whole loop without torch.compile, timing each stage.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STAGES = ["quick", "test", "ops", "unet", "sdo", "pipelines", "loop ddpm-cifar10 1", "all"]


def dry_run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def commands(output: str) -> list[list[str]]:
    """The printed commands, as argument lists with a leading `env VAR=value ...` dropped."""
    found = []
    for line in output.splitlines():
        if line.startswith("+ "):
            argv = shlex.split(line[2:])
            if argv[0] == "env":
                argv = argv[1:]
                while argv and re.fullmatch(r"\w+=.*", argv[0]):
                    argv = argv[1:]
            found.append(argv)
    return found


@pytest.fixture(scope="module")
def printed() -> dict[str, tuple[str, list[list[str]]]]:
    runs = {}
    for stage in STAGES:
        proc = dry_run(*stage.split())
        assert proc.returncode == 0, (f"gpu_check.sh {stage} (dry run) exited {proc.returncode}:\n"
                                      f"{proc.stdout}\n{proc.stderr}")
        runs[stage] = proc.stdout, commands(proc.stdout)
    return runs


def _help_check(argv: list[str]) -> tuple[object, str, str]:
    """Runs bench script argv[0] with its options and --help in this process (torch and the package are imported
    already, so this costs the script's own imports only); returns (exit status, help text, stderr). sys.argv,
    sys.path and the modules the script imported from its folder are restored."""
    out, err = io.StringIO(), io.StringIO()
    script = ROOT / argv[0]
    saved_argv, saved_path, saved_modules = sys.argv, sys.path[:], set(sys.modules)
    sys.argv = [str(script), *argv[1:], "--help"]
    # what `python bench/x.py` does before the script's first line: its folder first on sys.path, so that it
    # imports its neighbours (bench/common.py); runpy.run_path leaves sys.path alone
    sys.path.insert(0, str(script.parent))
    status: object = "no exit"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        status = e.code
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        for name in set(sys.modules) - saved_modules:
            if Path(getattr(sys.modules[name], "__file__", None) or "/").parent == script.parent:
                del sys.modules[name]  # no other test imports bench/ modules by their plain names
    return status, out.getvalue(), err.getvalue()[-2000:]


def test_unknown_stage_fails_before_anything_runs():
    proc = dry_run("bogus")
    assert proc.returncode == 2 and "unknown stage bogus" in proc.stdout and "+ " not in proc.stdout
    assert dry_run("loop", "sd15").returncode != 0


def test_quick_stage_is_a_timed_first_contact(printed):
    output, cmds = printed["quick"]
    timed = re.findall(r"^== (.+): \d+\.\d s$", output, flags=re.M)
    assert timed == ["build", "gpu tests", "op bandwidth", "op host time", "whole loop"], output
    assert ["python3", "setup.py", "-q", "build_ext", "--inplace"] in cmds
    assert "FUSED_DIFFUSION_REQUIRE_EXT=1" in output
    pytest_runs = [c for c in cmds if c[:3] == ["python3", "-m", "pytest"]]
    assert pytest_runs == [["python3", "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]]  # every gpu test

    def options(argv):
        parsed, key = {}, None
        for a in argv[2:]:
            if a.startswith("--"):
                key = a
                parsed[key] = []
            else:
                parsed[key].append(a)
        return parsed

    ops = [options(c) for c in cmds if c[:2] == ["python3", "bench/bench_ops.py"] and "--host" not in c]
    assert any(c[:3] == ["python3", "bench/bench_ops.py", "--host"] for c in cmds)  # host time per call, tiny tensors
    assert len(ops) == 1 and all(len(ops[0][k]) == 1 for k in ("--ops", "--dtypes", "--sizes")), ops
    loops = [options(c) for c in cmds if c[:2] == ["python3", "bench/bench_loop.py"]]
    assert len(loops) == 1 and len(loops[0]["--models"]) == 1 and loops[0]["--batches"] == ["1"], loops
    source = (ROOT / "bench" / "bench_loop.py").read_text()
    known = set(re.findall(r'"(\w+)" in methods', source))
    assert set(loops[0]["--methods"]) <= known, (loops[0]["--methods"], known)
    compiled = {m for m in known if "inductor" in m or "reduce_overhead" in m}
    assert compiled and not set(loops[0]["--methods"]) & compiled, "quick runs no torch.compile setup"


def test_every_stage_runs_existing_tests_and_valid_bench_options(printed, pytestconfig):
    markers = {line.split(":")[0].split("(")[0].strip() for line in pytestconfig.getini("markers")}
    benches = {}
    for stage, (output, cmds) in printed.items():
        assert cmds, f"{stage} prints no command"
        for argv in cmds:
            if argv[:3] == ["python3", "-m", "pytest"]:
                args = argv[3:]
                for flag, value in zip(args, args[1:]):
                    if flag == "-m":
                        used = set(re.findall(r"\w+", value)) - {"and", "or", "not"}
                        assert used <= markers, f"{stage}: -m {value!r} uses unregistered markers {used - markers}"
                paths = [a for i, a in enumerate(args)
                         if not a.startswith("-") and (i == 0 or args[i - 1] not in ("-m", "-p", "-k"))]
                for path in paths:
                    assert (ROOT / path).exists(), f"{stage}: pytest is given {path}, which does not exist"
            elif len(argv) > 1 and argv[0] == "python3" and argv[1].startswith("bench/"):
                assert (ROOT / argv[1]).is_file(), f"{stage}: {argv[1]} does not exist"
                benches[" ".join(argv[1:])] = (stage, argv[1:])
    for line, (stage, argv) in benches.items():
        status, text, err = _help_check(argv)
        assert status == 0, f"{stage}: {line} --help exited {status}: {err}"
        unknown = [a for a in argv if a.startswith("--") and a not in text]
        assert not unknown, f"{stage}: {argv[0]} has no option {unknown} (help:\n{text})"
