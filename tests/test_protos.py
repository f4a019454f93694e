"""The committed gRPC modules must be exactly what protoc generates from protos/ (run `make protos`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("teacher_pb2.py", "teacher_pb2_grpc.py", "teacher_pb2.pyi")


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Idualdistill/protocol/v1=protos/dualdistill/v1", f"--python_out={out}", f"--pyi_out={out}",
         f"--grpc_python_out={out}", "dualdistill/protocol/v1/teacher.proto"],
        cwd=tmp_path, check=True,
    )
    for name in GENERATED:
        fresh = (out / "dualdistill" / "protocol" / "v1" / name).read_text()
        committed = (ROOT / "client" / "dualdistill" / "protocol" / "v1" / name).read_text()
        assert fresh == committed, f"client/dualdistill/protocol/v1/{name} is stale: run `make protos`"


def test_json_logits_request_parses_into_proto() -> None:
    from google.protobuf import json_format

    from dualdistill.protocol.v1 import teacher_pb2

    body = (
        '{"model": "teacher", "sequences": [{"token_ids": [1, 2, 3], "start": 1}], "top_k": 8, '
        '"temperature": 0.5, "mode": "sample", "samples": 16, "seed": 3, "format": "binary"}'
    )
    request = json_format.Parse(body, teacher_pb2.LogitsRequest())
    assert request.model == "teacher"
    assert list(request.sequences[0].token_ids) == [1, 2, 3] and request.sequences[0].start == 1
    assert request.top_k == 8 and request.temperature == 0.5 and request.mode == "sample"
    assert request.samples == 16 and request.seed == 3 and request.format == "binary"
    assert not teacher_pb2.LogitsRequest().HasField("temperature")  # absent -> server default, not 0
