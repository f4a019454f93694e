"""Before / after of the wire codec's CPU time: two checkouts' `wire.encode` / `wire.decode` on the same
payloads, in alternating processes.

    python bench/codec_ab.py --before DIR [--after DIR] [--rounds 4]

DIR is a checkout of the project (e.g. `git worktree add /tmp/before main`); --after defaults to this one.
Each round runs one process per side (the sides alternate first), which times, on this thread's CPU clock,
every (payload, variant, call) with a warm-up and a median over repeats:
- "service B=1" / "service B=32": the service bench's shape (one / 32 sequences of 56 positions, k = 128,
  the tiny model's 320-id vocabulary: bench/wire_encode_speed.py's response);
- "smollm2-like": 4 x 128 positions, k = 128, vocabulary 49152 (tests/client/wire/synthetic.py);
- "smollm2-like B=1" / "vocab 128256 B=1": one sequence of 56 positions, k = 128, vocabulary 49152 / 128256
  (a one-sequence call of a real teacher: Llama 3's vocabulary is 128256 ids).
Both sides must write the same bytes (checked: SHA-256 of every payload). Prints a Markdown table of the
median over rounds, microseconds per position, and the before / after ratio; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import ROOT, markdown_table, source_pythonpath

# Runs inside each checkout: only modules both sides have (the codec, the two response builders).
PROBE = r"""
import hashlib, json, time
import numpy as np
from bench.wire_encode_speed import tiny_vocab_response
from dualdistill.protocol import wire
from tests.client.wire.synthetic import teacher_response

service = tiny_vocab_response()
cases = {"service B=1": (service[:1], 200), "service B=32": (service, 15),
         "smollm2-like": (teacher_response(sequences=4, rows=128, k=128, seed=0), 15),
         "smollm2-like B=1": (teacher_response(sequences=1, rows=56, k=128, seed=1), 200),
         "vocab 128256 B=1": (teacher_response(sequences=1, rows=56, k=128, vocab=128256, seed=2), 200)}
out = {}
for name, (results, reps) in cases.items():
    positions = sum(r.num_rows for r in results)
    for lossless in (False, True):
        payload = wire.encode(results, lossless=lossless)
        variant = "lossless" if lossless else "lossy"
        out[f"{name}|{variant}|sha"] = hashlib.sha256(payload).hexdigest()
        for call, fn in (("encode", lambda: wire.encode(results, lossless=lossless)),
                         ("decode", lambda: wire.decode(payload))):
            for _ in range(3):
                fn()
            times = []
            for _ in range(reps):
                begin = time.thread_time()
                fn()
                times.append(time.thread_time() - begin)
            out[f"{name}|{variant}|{call}"] = float(np.median(times)) / positions * 1e6
print(json.dumps(out))
"""


def probe(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALDISTILL_")}
    env |= {"PYTHONPATH": source_pythonpath(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=root, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the probe failed in {root}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the code before the change")
    parser.add_argument("--after", type=Path, default=ROOT, help="the checkout after it (default: this one)")
    parser.add_argument("--rounds", type=int, default=4, help="processes per side, alternating")
    args = parser.parse_args(argv)
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict]] = {side: [] for side in roots}
    for rnd in range(args.rounds):
        for side in list(roots) if rnd % 2 == 0 else list(reversed(roots)):
            runs[side].append(probe(roots[side]))
            print(f"[codec_ab] {side} round {rnd + 1}/{args.rounds}", file=sys.stderr)
    hashes = {key for run in runs["before"] + runs["after"] for key in run if key.endswith("|sha")}
    differ = [key for key in sorted(hashes) if len({run[key] for run in runs["before"] + runs["after"]}) != 1]
    rows = []
    for key in runs["after"][0]:
        if key.endswith("|sha"):
            continue
        case, variant, call = key.split("|")
        before = float(np.median([run[key] for run in runs["before"]]))
        after = float(np.median([run[key] for run in runs["after"]]))
        rows.append([case, variant, call, f"{before:.2f}", f"{after:.2f}", f"{before / after:.2f}x"])
    print(f"wire codec, CPU µs per position (this thread's clock), median of {args.rounds} alternating processes "
          f"per side:\n")  # fmt: skip
    print(markdown_table(["payload", "variant", "call", "before", "after", "before / after"], rows))
    print(f"\nSame bytes on both sides: {'yes' if not differ else 'NO, differ in ' + ', '.join(differ)}. "
          f"1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
