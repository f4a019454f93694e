"""The end-to-end demo (`dualdistill demo`, docs/demo.md) and the pieces the experiments reuse.

    config.py    sizes (tiny | small | medium | large) and options
    models.py    the teacher (prepared SmolLM2) and the layer-pruned student
    service.py   `run_service`: the teacher service as a child process that is always stopped
    data.py      the arithmetic query sets and the teacher samples for SFT
    evaluate.py  held-out metrics of any model, teacher rows fetched once
    report.py    the table, results.json, results.png
    pipeline.py  `run_demo`: the stages in order, with caching
"""

from dualdistill.demo.config import SIZES, DemoOptions, DemoSize
from dualdistill.demo.pipeline import DemoHooks, DemoResult, run_demo

__all__ = ["SIZES", "DemoHooks", "DemoOptions", "DemoResult", "DemoSize", "run_demo"]
