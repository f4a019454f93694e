"""ModelInfo: fingerprint, tokenizer hash, limits; path resolution and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dualdistill.protocol.v1 import teacher_pb2
from dualdistill_server.models import ModelLoadError, load_model, resolve_model_path
from tests.fixtures.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def twin_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Same seed twice (different directories), another seed, another tokenizer."""
    root = tmp_path_factory.mktemp("twins")
    return {
        "a": build_tiny_model(root / "a"),
        "b": build_tiny_model(root / "b"),
        "seed1": build_tiny_model(root / "seed1", seed=1),
        "variant": build_tiny_model(root / "variant", corpus_variant=1),
    }


def test_info_fields_match_the_proto_and_the_limits(tiny_dir: Path) -> None:
    model = load_model("teacher", str(tiny_dir), max_seq_len=100, max_top_k=1000)
    info = model.info
    assert list(info.to_dict()) == [f.name for f in teacher_pb2.ModelInfo.DESCRIPTOR.fields]
    assert info.name == "teacher" and info.dtype == "float32"
    assert info.vocab_size == model.model.config.vocab_size == len(model.tokenizer)
    assert info.max_seq_len == 100  # min(config 512, the setting)
    assert info.max_top_k == info.vocab_size  # min(setting, vocab)
    assert info.eos_token_id == model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert info.bos_token_id == model.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert len(info.fingerprint) == 16 and int(info.fingerprint, 16) >= 0
    defaults = load_model("teacher", str(tiny_dir)).info
    assert defaults.max_seq_len == 512 and defaults.max_top_k == 256


def test_fingerprint_is_stable_and_tracks_weights_and_dtype(twin_dirs: dict[str, Path]) -> None:
    first = load_model("x", str(twin_dirs["a"])).info.fingerprint
    assert load_model("y", str(twin_dirs["a"])).info.fingerprint == first  # two loads
    assert load_model("x", str(twin_dirs["b"])).info.fingerprint == first  # same content elsewhere
    assert load_model("x", str(twin_dirs["seed1"])).info.fingerprint != first  # other weights
    assert load_model("x", str(twin_dirs["a"]), dtype="bfloat16").info.fingerprint != first  # serving dtype


def test_tokenizer_hash_equal_for_equal_tokenizers(twin_dirs: dict[str, Path]) -> None:
    a = load_model("a", str(twin_dirs["a"])).info.tokenizer_sha256
    assert load_model("b", str(twin_dirs["b"])).info.tokenizer_sha256 == a
    assert load_model("s", str(twin_dirs["seed1"])).info.tokenizer_sha256 == a  # weights do not matter
    assert load_model("v", str(twin_dirs["variant"])).info.tokenizer_sha256 != a


def test_bfloat16_serving_stays_close_to_float32(twin_dirs: dict[str, Path]) -> None:
    from tests.server.models.helpers import make_task

    ids = list(range(3, 40))
    f32 = load_model("f", str(twin_dirs["a"]))
    bf16 = load_model("h", str(twin_dirs["a"]), dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16 and bf16.info.dtype == "bfloat16"
    (a,) = f32.compute_logits([make_task(ids, 5, top_k=1)])
    (b,) = bf16.compute_logits([make_task(ids, 5, top_k=1)])
    assert b.top_logprobs.dtype.name == "float32"
    assert abs(a.token_logprobs - b.token_logprobs).max() < 1.0  # same model, coarser arithmetic


def test_resolve_model_path_errors(tmp_path: Path, tiny_dir: Path) -> None:
    assert resolve_model_path(str(tiny_dir)) == str(tiny_dir)
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_model_path(str(tmp_path))
    file = tmp_path / "weights.gguf"
    file.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model_path(str(file))
    with pytest.raises(ModelLoadError, match="neither a directory"):
        resolve_model_path("./no/such/dir/here")
    assert resolve_model_path("some-org/some-model") == "some-org/some-model"  # a hub id passes through


def test_unknown_dtype_is_refused(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        load_model("x", str(tiny_dir), dtype="int8")


def test_hub_id_offline_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # Offline mode makes the hub client fail at once instead of retrying name resolution for ~25 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="network access"):
        load_model("remote", "some-org/not-a-local-model")
