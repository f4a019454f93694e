"""Stage 1: the teacher and the student's starting point.

Teacher: SmolLM2-135M-Instruct, converted once into the model cache (`prepare_smollm2`; no model hub),
unless a directory is given. Student: the teacher with only every k-th decoder layer kept (k =
`DemoSize.keep_every`, 3 by default: layers 0, 3, ..., 27 of 30), so it shares the tokenizer (the
handshake passes) and starts from the teacher's embeddings, final norm and LM head. Keeping spread-out
layers rather than the first ten keeps the residual stream's early-to-late progression; the pruned model
is still far from the teacher and needs the SFT stage before it says anything sensible.
"""

from __future__ import annotations

from pathlib import Path

from dualdistill.demo.config import DemoOptions


def teacher_directory(options: DemoOptions) -> Path:
    if options.teacher_dir is not None:
        return Path(options.teacher_dir)
    from dualdistill_server.models.prepare import prepare_smollm2

    return prepare_smollm2()  # idempotent: converts on first use, then returns the cached directory


def student_init_directory(options: DemoOptions, teacher_dir: Path) -> Path:
    """The pruned student under WORKDIR/models (reused across runs unless --fresh)."""
    if options.student_dir is not None:
        return Path(options.student_dir)
    from dualdistill_server.models.prepare import is_complete
    from dualdistill_server.models.prune import prune_layers

    keep = options.size.keep_every
    out = options.workdir / "models" / f"{teacher_dir.name}-every{keep}"
    if is_complete(out) and not options.fresh:
        print(f"reusing the pruned student {out}", flush=True)
        return out
    return prune_layers(teacher_dir, out, keep=keep, force=True)
