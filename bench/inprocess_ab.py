"""Before / after of one function, in one process: the module file of a checkout before a change loaded
beside this checkout's, and the two called alternately on the same inputs.

    python bench/inprocess_ab.py --before DIR [--cases postprocess,decode] [--pairs 1500]

DIR is a checkout of the project (e.g. `git worktree add /tmp/before main`). For a change of tens of
microseconds inside one module, two processes (bench/codec_ab.py) or two servers (bench/service_ab.py)
differ by more than that from the machine alone; here both sides run in one process, one call each per
round in alternating order, on the same inputs, and their outputs must be equal. The before side's module
is the file from DIR executed as a module of its own, so it imports everything else from this checkout:
compare only changes confined to that file. Cases:
- postprocess B=1 / B=32: the server's `sequence_distributions` (models/distributions.py) on 1 or 32
  sequences of 56 rows of the tiny model's 320-id vocabulary, top_k = 128 (fresh random logits each
  round, the same for both sides);
- decode: `wire.decode` of one-sequence answers (vocab 320, 49152) and a 32-sequence one, with the before
  side's container.py `Streams.joined` swapped in.
Prints, per case, the median wall time per call of each side and the median of the after - before
differences with a bootstrap 95% interval (bench/common.py `paired_difference`); writes nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import alternating_calls, fmt, markdown_table, paired_difference

CASES = ("postprocess", "decode")


def load_before(root: Path, relative: str, name: str) -> ModuleType:
    """The file `relative` of the checkout `root`, executed as a module named `name` (registered, so that
    dataclasses and the like find it)."""
    spec = importlib.util.spec_from_file_location(name, root / relative)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(root / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def swapped(owner: object, attribute: str, value: object) -> Iterator[None]:
    saved = getattr(owner, attribute)
    setattr(owner, attribute, value)
    try:
        yield
    finally:
        setattr(owner, attribute, saved)


def _rounds(pairs: int, sequences: int) -> int:
    """--pairs for a one-sequence case, a quarter of it for a 32-sequence one (each call ~30x longer)."""
    return pairs if sequences == 1 else max(pairs // 4, 1)


def _equal_results(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x.equals(y) for x, y in zip(a, b, strict=True))


def postprocess_cases(before: Path, pairs: int) -> dict[str, dict]:
    import torch

    from dualdistill.protocol.params import LogitsParams
    from dualdistill_server.models import distributions
    from dualdistill_server.models.types import LogitsTask

    torch.set_num_threads(1)
    old = load_before(before, "server/dualdistill_server/models/distributions.py", "before_distributions")
    rng = np.random.default_rng(0)
    out = {}
    for batch in (1, 32):

        def inputs(batch: int = batch) -> tuple:
            tasks = [LogitsTask(token_ids=rng.integers(0, 320, 64).astype(np.int64), start=8,
                                params=LogitsParams(top_k=128)) for _ in range(batch)]  # fmt: skip
            return torch.from_numpy(rng.normal(0.0, 3.0, (56 * batch, 320)).astype(np.float32)), tasks

        calls = {"before": lambda a: old.sequence_distributions(*a), "after": lambda a: distributions.sequence_distributions(*a)}
        with torch.inference_mode():
            out[f"postprocess B={batch}"] = alternating_calls(calls, inputs, _equal_results, _rounds(pairs, batch),
                                                              warmup=2)  # fmt: skip
    return out


def decode_cases(before: Path, pairs: int) -> dict[str, dict]:
    from bench.wire_encode_speed import tiny_vocab_response
    from dualdistill.protocol import wire
    from dualdistill.protocol.wire import container
    from tests.client.wire.synthetic import teacher_response

    old = load_before(before, "client/dualdistill/protocol/wire/container.py", "before_container")
    answers = {"decode vocab 320 B=1": tiny_vocab_response()[:1],
               "decode vocab 49152 B=1": teacher_response(1, 56, k=128, vocab=49152, seed=2),
               "decode vocab 320 B=32": tiny_vocab_response()}  # fmt: skip
    out = {}
    for name, results in answers.items():
        payload = wire.encode(results)

        def old_decode(data: bytes) -> list:
            with swapped(container.Streams, "joined", old.Streams.joined):
                return wire.decode(data)

        calls = {"before": old_decode, "after": wire.decode}
        out[name] = alternating_calls(calls, lambda payload=payload: payload, _equal_results,
                                      _rounds(pairs, len(results)), warmup=2)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the code before the change")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--pairs", type=int, default=1500, help="rounds per one-sequence case (a quarter for B=32)")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases {sorted(unknown)}: choose from {', '.join(CASES)}")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    before = args.before.resolve()
    found = {}
    if "postprocess" in cases:
        found |= postprocess_cases(before, args.pairs)
    if "decode" in cases:
        found |= decode_cases(before, args.pairs)
    rows = [[name, len(t["after"]), f"{np.median(t['before']) * 1e6:.1f}", f"{np.median(t['after']) * 1e6:.1f}",
             fmt(paired_difference(t["after"], t["before"]), scale=1e6)] for name, t in found.items()]  # fmt: skip
    print(f"In-process pairs against {before} (wall µs per call, medians; after - before: median of the paired "
          "differences [bootstrap 95% interval]):\n")
    print(markdown_table(["case", "pairs", "before µs", "after µs", "after - before µs"], rows))


if __name__ == "__main__":
    main()
