"""`LogitsParams` (dualdistill/protocol/params.py): the request fields it writes and its overrides."""

from __future__ import annotations

import dataclasses

import pytest

from dualdistill.protocol.params import LogitsParams


def test_to_dict_holds_every_field_as_the_proto_spells_it() -> None:
    params = LogitsParams(top_k=7, temperature=0.5, mode="sample", samples=3, seed=11)
    assert params.to_dict() == dataclasses.asdict(params)
    assert params.to_dict() == {"top_k": 7, "temperature": 0.5, "mode": "sample", "samples": 3, "seed": 11}


def test_overrides_replace_and_validate_and_name_a_misspelt_field() -> None:
    base = LogitsParams()
    assert base.with_overrides() is base
    assert base.with_overrides(top_k=5).top_k == 5 and base.top_k == 20
    with pytest.raises(TypeError, match=r"unknown logits parameter\(s\) \['topk'\]"):
        base.with_overrides(topk=5)
    with pytest.raises(ValueError, match="top_k"):
        base.with_overrides(top_k=0)
