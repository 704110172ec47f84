"""Command line: `python -m fused_diffusion demo` (the shipped digits model with every ODE solver; `--gmm` for the
analytic Gaussian mixture), `train digits` / `digits-shortcut` / `digits-flow` / `digits-consistency` /
`digits-pcm` / `digits-classifier` / `digits-amed` (the shipped weights), `backends`."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import fused_diffusion as fd
from fused_diffusion import cli_args
from fused_diffusion.ops import availability


def backend_variable_problem() -> str | None:
    """Why FUSED_DIFFUSION_BACKEND is unusable as set, or None (unset, empty or a backend's name)."""
    value = os.environ.get(availability.ENV)
    if not value:
        return None
    if value not in availability.BACKENDS:
        return (f"{availability.ENV}={value!r} is invalid; valid values are {', '.join(availability.BACKENDS)} "
                "(or leave it unset for the automatic choice)")
    os.environ.pop(availability.ENV)
    try:
        report = fd.backends()
    finally:
        os.environ[availability.ENV] = value
    if value not in report["available"]:
        return f"{availability.ENV}={value!r} names a backend that cannot run here: {report['unavailable'][value]}"
    return None


def print_backends(problem: str | None) -> None:
    """The backends report; with a bad variable, the report without it (the ops would refuse to run) and the error."""
    if problem is None:
        print(json.dumps(fd.backends(), indent=2))
        return
    value = os.environ.pop(availability.ENV)
    try:
        print(json.dumps(fd.backends(), indent=2))
    finally:
        os.environ[availability.ENV] = value
    raise SystemExit(f"error: {problem}; the report above ignores it")


# which `train` options each model reads; another option given is refused by name, not silently ignored
UNET_OPTIONS = ("iterations", "batch_size", "lr", "seed", "max_minutes", "threads", "workdir", "resume", "out")
TRAIN_OPTIONS = {"digits": UNET_OPTIONS, "digits-shortcut": UNET_OPTIONS, "digits-flow": UNET_OPTIONS,
                 "digits-consistency": UNET_OPTIONS + ("distance",),
                 "digits-pcm": UNET_OPTIONS + ("phases", "distance"),
                 "digits-classifier": ("seed", "threads", "out"),
                 "digits-amed": ("student", "calls", "trajectories", "seed", "threads", "out")}


# the distances each distilled student's loss takes
DISTANCES = {"digits-consistency": fd.consistency.DISTANCES, "digits-pcm": fd.pcm.DISTANCES}


def check_train_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits as argparse does when an option the chosen model does not read was given another value, or a
    distance its loss does not take."""
    if args.distance is not None and args.model in DISTANCES and args.distance not in DISTANCES[args.model]:
        parser.error(f"argument --distance: `train {args.model}` takes {', '.join(DISTANCES[args.model])}, "
                     f"got {args.distance!r}")
    for name in vars(args):
        if name in ("command", "model") or name in TRAIN_OPTIONS[args.model]:
            continue
        if getattr(args, name) != parser.get_default(name):
            parser.error(f"argument --{name.replace('_', '-')}: not used by `train {args.model}` (it reads "
                         f"{', '.join('--' + o.replace('_', '-') for o in TRAIN_OPTIONS[args.model])})")


def train(args: argparse.Namespace) -> None:
    from fused_diffusion.zoo import classifier, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out is not None:  # made now, not after the training (cli_args.file_path checked that it can be)
        args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.model == "digits-classifier":
        model, acc = classifier.train_classifier(seed=args.seed)
        path = args.out or classifier.CLASSIFIER_WEIGHTS
        classifier.save_classifier(model, acc, path, seed=args.seed)
        print(f"held-out accuracy {acc:.4f}; wrote {path}")
        return
    if args.model == "digits-amed":
        from fused_diffusion.zoo.digits_amed import train_digits_amed

        print(f"wrote {train_digits_amed(args.student, args.calls, args.trajectories, args.seed, args.out)}")
        return
    objective = {"digits": "ddpm", "digits-shortcut": "shortcut", "digits-flow": "flow",
                 "digits-consistency": "consistency", "digits-pcm": "pcm"}[args.model]
    given = {"iterations": args.iterations, "batch_size": args.batch_size, "lr": args.lr, "phases": args.phases,
             "distance": args.distance}
    cfg = train.TrainConfig.for_objective(objective, seed=args.seed, max_minutes=args.max_minutes, threads=args.threads,
                                          workdir=args.workdir or Path(f"runs/{args.model}"), out=args.out,
                                          **{k: v for k, v in given.items() if v is not None})
    print(f"wrote {train.train_digits(cfg, resume=args.resume)}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fused_diffusion")
    sub = parser.add_subparsers(dest="command", required=True)
    from fused_diffusion import demo, generate

    demo_parser = sub.add_parser("demo", help="time to quality on the shipped digits model: every fast method against the baseline solvers")
    demo.add_arguments(demo_parser)
    generate.add_arguments(sub.add_parser("generate", help="many samples of the digits model as resumable shards, "
                                          "on one process or under torchrun"))
    t = sub.add_parser("train", help="train the shipped digits U-Net, the metric's classifier or an AMED predictor")
    t.add_argument("model", choices=["digits", "digits-shortcut", "digits-flow", "digits-consistency", "digits-pcm",
                                     "digits-classifier", "digits-amed"])
    defaults = fd.zoo.train.TrainConfig()
    # iterations, batch size and lr default per model (TrainConfig.for_objective): None here means "not given"
    t.add_argument("--iterations", type=cli_args.count(), default=None,
                   help=f"default {defaults.iterations}; the distilled students: fd.zoo.train.DISTILL_DEFAULTS")
    t.add_argument("--batch-size", type=cli_args.count(), default=None, help=f"default {defaults.batch_size}")
    t.add_argument("--lr", type=cli_args.real(above=0), default=None,
                   help=f"default {defaults.lr}; the distilled students: fd.zoo.train.DISTILL_DEFAULTS")
    t.add_argument("--phases", type=cli_args.count(), default=None, help=f"digits-pcm: phases (default {defaults.phases})")
    t.add_argument("--distance", choices=sorted({*fd.consistency.DISTANCES, *fd.pcm.DISTANCES}), default=None,
                   help=f"the distance of the loss: digits-consistency {', '.join(fd.consistency.DISTANCES)} "
                        f"(pseudo_huber: improved consistency training's), digits-pcm {', '.join(fd.pcm.DISTANCES)} "
                        f"(huber: the PCM code's); default: fd.zoo.train.DISTILL_DEFAULTS, else {defaults.distance}")
    t.add_argument("--seed", type=cli_args.seed, default=defaults.seed)
    t.add_argument("--max-minutes", type=cli_args.real(above=0), default=None, help="stop early, saving, after this much wall time")
    t.add_argument("--threads", type=cli_args.count(), default=None)
    t.add_argument("--workdir", type=cli_args.folder, default=None,
                   help="checkpoints (resumable with --resume; default runs/MODEL)")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--out", type=cli_args.file_path, default=None, help="weights file (default: the shipped one)")
    t.add_argument("--student", choices=fd.amed.predictor.STUDENTS, default="amed", help="digits-amed: the solver")
    t.add_argument("--calls", type=cli_args.count(), default=5, help="digits-amed: model calls of the student")
    t.add_argument("--trajectories", type=cli_args.count(), default=30_000, help="digits-amed: teacher trajectories")
    sub.add_parser("backends", help="print which op backends are available and active")
    args = parser.parse_args()
    problem = backend_variable_problem()  # checked up front: every fused op would raise it later, mid-run
    if args.command == "backends":
        print_backends(problem)
    elif problem is not None:
        parser.exit(2, f"{parser.prog}: error: {problem}\n")
    elif args.command == "demo":
        demo.check_mode_options(demo_parser, args)
        demo.main(args)
    elif args.command == "generate":
        generate.main(args)
    elif args.command == "train":
        check_train_options(t, args)
        try:
            train(args)
        except fd.zoo.train.CheckpointError as e:  # a checkpoint of another run in --workdir
            t.error(f"argument --workdir: {e}")


if __name__ == "__main__":
    main()
