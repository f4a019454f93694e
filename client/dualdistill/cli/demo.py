"""`dualdistill demo`: SmolLM2 teacher -> pruned student -> SFT -> pairs -> DPD -> before/after table.

    dualdistill demo                          # size small: about 10-15 minutes on 2 CPU cores
    dualdistill demo --size medium --workdir runs/demo-medium
    dualdistill demo --fresh                  # redo every stage instead of reusing the last run's work
    dualdistill demo --teacher DIR --student DIR --size tiny   # your own models (tests use tiny ones)

Everything is written under --workdir (default runs/demo); docs/demo.md explains the stages, the
caching and what the table means. Exit status: 0 done; 1 a stage failed (the message says which);
130 interrupted (the service child is stopped either way).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SIZES = ("tiny", "small", "medium", "large")  # dualdistill.demo.config.SIZES, without importing it here


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end DPD demo on SmolLM2 (offline, CPU)",
        description="Prepare SmolLM2-135M-Instruct as the teacher, prune it into a student, SFT it on teacher "
        "samples, build arithmetic preference pairs through the teacher service, train with DPD and print "
        "a before/after table.",
    )
    parser.add_argument("--size", choices=SIZES, default="small",
                        help="how much data and how many steps (default small: ~15 min on 2 CPU cores)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"), help="where everything goes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the queries, sampling and training")
    parser.add_argument("--fresh", action="store_true", help="redo every stage (ignore earlier runs' work)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in this process and in the service (default 1; see docs/demo.md)")  # fmt: skip
    parser.add_argument("--teacher", type=Path, default=None,
                        help="teacher HF directory (default: SmolLM2-135M-Instruct, prepared offline)")  # fmt: skip
    parser.add_argument("--student", type=Path, default=None,
                        help="student-init HF directory sharing the teacher's tokenizer (default: the teacher "
                        "pruned to every 3rd layer)")  # fmt: skip
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dualdistill.client.errors import TeacherServiceError
    from dualdistill.demo import DemoOptions, run_demo
    from dualdistill.demo.service import ServiceStartError

    if args.seed < 0 or args.threads < 1:
        print("dualdistill demo: --seed must be >= 0 and --threads >= 1", file=sys.stderr)
        return 2
    if args.size == "tiny" and args.teacher is None:
        print("dualdistill demo: --size tiny is for tiny test models; give --teacher (and --student)", file=sys.stderr)
        return 2
    options = DemoOptions(
        workdir=args.workdir, seed=args.seed, fresh=args.fresh, threads=args.threads,
        teacher_dir=args.teacher, student_dir=args.student, progress=args.progress,
    ).with_size(args.size)  # fmt: skip
    try:
        run_demo(options)
    except (ServiceStartError, TeacherServiceError, RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"\ndualdistill demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
