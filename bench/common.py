"""Shared pieces of the benchmarks: statistics, peak-memory probes, child processes, Markdown output.

Every figure a benchmark reports is a median over repeats with its spread (interquartile range, or the
min-max range when there are fewer than four repeats), and every ratio is taken between variants measured
in the same run, so a slow moment on the shared machine moves both sides.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"  # one <name>.json + <name>.md per section, assembled by run_all.py
PYTHON = sys.executable


# ---------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Summary:
    """Median and spread of n repeated measurements; `spread` names the range (IQR or min-max)."""

    median: float
    low: float
    high: float
    n: int
    spread: str

    def as_dict(self) -> dict:
        return {"median": self.median, "low": self.low, "high": self.high, "n": self.n, "spread": self.spread}


def summarize(values: Iterable[float]) -> Summary:
    """Median with the IQR (n >= 4, `statistics.quantiles` 'inclusive') or the min-max range (n < 4)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("summarize needs at least one value")
    med = statistics.median(xs)
    if len(xs) >= 4:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        return Summary(med, q1, q3, len(xs), "IQR")
    return Summary(med, xs[0], xs[-1], len(xs), "min-max")


def alternating_calls(calls: dict[str, Callable[[Any], Any]], inputs: Callable[[], Any], same: Callable[[Any, Any], bool],
                      rounds: int, *, warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:  # fmt: skip
    """{name: [seconds per call]} of two callables run one call each per round, in alternating order, on
    the round's `inputs()`; the two outputs of every round must be `same` (RuntimeError otherwise). The
    first `warmup` rounds are not timed. `clock`: time.perf_counter (wall) or time.thread_time (CPU)."""
    first, second = calls
    times: dict[str, list[float]] = {first: [], second: []}
    for round_ in range(rounds + warmup):
        args = inputs()
        outputs = {}
        for name in (first, second) if round_ % 2 else (second, first):
            begin = clock()
            outputs[name] = calls[name](args)
            if round_ >= warmup:
                times[name].append(clock() - begin)
        if not same(outputs[first], outputs[second]):
            raise RuntimeError(f"{first} and {second} returned different results")
    return times


def paired_difference(after: Sequence[float], before: Sequence[float], seed: int = 11) -> dict[str, float]:
    """{"median", "low", "high"}: the median of the pairwise differences after[i] - before[i] (measured in the
    same round, so a slow moment of the machine moves both) and its 95% interval, by bootstrap over the
    pairs (1000 resamples)."""
    import numpy as np

    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    boot = np.median(np.random.default_rng(seed).choice(diff, (1000, len(diff))), axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"median": float(np.median(diff)), "low": float(low), "high": float(high)}


def fmt(s: Summary | dict, digits: int = 3, scale: float = 1.0) -> str:
    """'median [low, high]' with `digits` significant digits, values multiplied by `scale`."""
    d = s.as_dict() if isinstance(s, Summary) else s

    def g(x: float) -> str:
        x *= scale
        return f"{x:.0f}" if abs(x) >= 10**digits else f"{x:.{digits}g}"

    return f"{g(d['median'])} [{g(d['low'])}, {g(d['high'])}]"


def ratio_summary(num: Sequence[float], den: Sequence[float]) -> Summary:
    """Spread of a ratio of two paired series (same rounds): summary of num[i] / den[i]."""
    return summarize(a / b for a, b in zip(num, den, strict=True))


# ------------------------------------------------------------------------------------------ peak memory
def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux: write 5 to /proc/self/clear_refs).

    Returns False where the kernel refuses (then VmHWM still holds earlier peaks and cannot be used).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def rss_bytes() -> int:
    """Current resident set size (VmRSS) in bytes."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Resident-set high-water mark (VmHWM) since start or the last `reset_peak_rss`, in bytes."""
    return _status_kib("VmHWM") * 1024


# ------------------------------------------------------------------------------------- child processes
def run_child(args: Sequence[str], timeout: float = 900.0, env: dict | None = None) -> dict:
    """Run `python <args>` from the repository root; its last stdout line is a JSON object, returned."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [PYTHON, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"benchmark child {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------ machine and output
def source_pythonpath(root: Path = ROOT) -> str:
    """PYTHONPATH for a child process that runs `root`'s checkout from source: its client, server and root
    folders (the packages, and `bench`/`tests` for the child's own imports)."""
    return os.pathsep.join(str(root / p) for p in ("client", "server", "."))


def post_json(connections, path: str, body: bytes) -> tuple[object, bytes]:
    """POST a JSON body through our blocking client's own HTTP connections (client/dualdistill/client/
    plain_http.py `PlainHttpConnections`): the answer's (headers, content); RuntimeError unless it is a 200."""
    status, headers, content = connections.request("POST", path, {"content-type": "application/json"}, body, 60.0)
    if status != 200:
        raise RuntimeError(f"POST {path} answered {status}")
    return headers, content


def machine_info() -> dict:
    """CPU model, core count, OS, Python / torch / transformers versions and the date (UTC)."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    for name in ("torch", "transformers", "grpc", "numpy"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            info[name] = "not installed"
    return info


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


@dataclass
class Section:
    """One benchmark's result: a Markdown body (tables, reading, command) plus the raw data."""

    name: str  # file stem, e.g. "loss_memory"
    title: str
    markdown: str
    data: dict = field(default_factory=dict)

    def save(self, directory: Path | None = None) -> None:
        """Write <directory>/<name>.md and .json (default bench/results/, which run_all.py assembles)."""
        directory = Path(directory) if directory is not None else RESULTS
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{self.name}.md").write_text(self.markdown.rstrip() + "\n")
        (directory / f"{self.name}.json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")


IMG = ROOT / "docs" / "img"


def add_output_args(parser) -> None:
    """--results-dir / --img-dir: where a section's .md/.json and its plot go (the GPU script uses $OUT);
    --render-from: rebuild a section's Markdown from its saved JSON without measuring again."""
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where <name>.md/.json go")
    parser.add_argument("--img-dir", type=Path, default=IMG, help="where plots go (default docs/img)")
    parser.add_argument("--render-from", type=Path, help="re-render a saved results JSON (no measurement)")
    parser.add_argument("--repeats", type=Path, nargs="*", default=[],
                        help="saved results JSONs of repeat runs of this section (e.g. run with --results-dir "
                             "elsewhere): their goal rows join this run's, met only where every run met them")  # fmt: skip


def saved_run(path: Path, parse) -> tuple[dict, object, list[str]]:
    """(data, args, argv) of a saved section JSON: the run's own argv re-parsed, then its recorded args."""
    data = json.loads(Path(path).read_text())
    argv = data.get("argv", [])
    args = parse(argv)
    for key, value in data.get("args", {}).items():
        setattr(args, key, value)
    return data, args, argv


def section_main(argv: list[str] | None, parse, run, section) -> None:
    """A section script's entry point: measure (`run(argv)`), or re-render a saved run (`--render-from`
    JSON, through `section(data, args, argv)`); save the section's .md/.json and print its Markdown."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    out = section(*saved_run(args.render_from, parse)) if args.render_from else run(argv)
    repeats = list(out.data.get("repeats", []))
    for record in (repeat_record(path) for path in args.repeats):
        if record not in repeats:  # a re-render (--render-from) keeps the saved repeats
            repeats.append(record)
    if repeats:
        with_repeats(out, repeats)
    out.save(args.results_dir)
    print(out.markdown)


def repeat_record(path: Path) -> dict:
    """What a section keeps of a repeat run's saved JSON: when it ran, its command line and goal rows."""
    data = json.loads(Path(path).read_text())
    return {"date": data.get("machine", {}).get("date"), "argv": data.get("argv", []), "goals": data.get("goals", [])}


def with_repeats(out: Section, repeats: list[dict]) -> None:
    """Fold repeat runs into `out`: each goal row's measured text gains every repeat's ("run 2: ..."), its
    verdict is met only if met in every run, and the Markdown lists the repeats' own rows."""
    out.data["repeats"] = repeats
    for goal in out.data.get("goals", []):
        same = [g for r in repeats for g in r["goals"] if g["item"] == goal["item"]]
        if not same:
            continue
        runs = [goal, *same]
        goal["measured"] = "; ".join(f"run {i + 1}: {g['measured']}" for i, g in enumerate(runs))
        verdicts = [g["met"] for g in runs]
        goal["met"] = all(verdicts) if all(v is not None for v in verdicts) else None
        if goal["met"] is False and any(verdicts):
            goal["measured"] += f" (met in {sum(bool(v) for v in verdicts)} of {len(runs)} runs)"
    rows = [[f"run {i + 2}: {r['date']}", g["item"], g["measured"], {True: "met", False: "not met"}.get(g["met"], "n/a")]
            for i, r in enumerate(repeats) for g in r["goals"]]  # fmt: skip
    out.markdown = (out.markdown.rstrip() + "\n\nRepeat runs of this section on the same machine (the same command "
                    "with `--results-dir` elsewhere; the goal table above counts a goal met only where every run "
                    "met it):\n\n" + markdown_table(["run", "item", "measured", "verdict"], rows) + "\n")


def plain_args(args) -> dict:
    """The scalar and list settings of an argparse namespace, for a section's JSON."""
    return {k: v for k, v in vars(args).items() if isinstance(v, int | float | str | list)}


def command_line(script: str, argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python", script, *argv])


def header(title: str, command: str, info: dict) -> str:
    """The lines under each section title: the command that reproduces it and when it ran."""
    return (
        f"## {title}\n\nCommand: `{command}` — run {info['date']}, torch {info['torch']}, "
        f"transformers {info['transformers']}.\n"
    )
