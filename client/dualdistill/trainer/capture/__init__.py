"""Offline capture of teacher logits: run the teacher once over a pairs file, train from disk later.

    store.py   the directory layout (shards in the wire format + index.json), CaptureWriter, CaptureReader
    run.py     `capture_pairs(...)`: fetch every pair's rows (resumable) and write them
"""

from dualdistill.trainer.capture.store import CaptureError, CaptureReader, CaptureSettings, CaptureWriter

__all__ = ["CaptureError", "CaptureReader", "CaptureSettings", "CaptureWriter"]
