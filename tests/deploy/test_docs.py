"""The generated tables are current, cover every ServerConfig field and every chart value, and the
deployment files set no DUALDISTILL_* variable that ServerConfig does not have."""

from __future__ import annotations

import re

import yaml

from dualdistill.trainer.config import API_KEY_ENV
from tests.deploy import gen_docs
from tests.deploy.support import CHART_DIR, ROOT, server_config_from_env, server_env_names, server_fields


def test_generated_parts_are_current():
    stale = [
        str(path.relative_to(ROOT))
        for path, text in gen_docs.expected_files().items()
        if path.read_text() != text
    ]
    assert not stale, f"regenerate with `python -m tests.deploy.gen_docs --write`: {stale}"


def test_env_table_lists_every_serverconfig_field():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    table = doc[doc.index(gen_docs.ENV_BEGIN) : doc.index(gen_docs.ENV_END)]
    listed = set(re.findall(r"^\| `(DUALDISTILL_[A-Z_]+)` \|", table, flags=re.M))
    assert listed == server_env_names()


def test_settings_schema_is_serverconfig_minus_the_chart_owned_fields():
    assert set(gen_docs.CHART_OWNED_FIELDS) <= server_fields()
    assert set(gen_docs.settings_schema()["properties"]) == server_fields() - set(gen_docs.CHART_OWNED_FIELDS)


def _leaf_paths(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_every_chart_value_is_documented():
    text = (CHART_DIR / "values.yaml").read_text()
    documented = {path for path, _ in gen_docs.documented_values(text)}
    undocumented = [
        leaf
        for leaf in _leaf_paths(yaml.safe_load(text))
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert not undocumented
    readme = (CHART_DIR / "README.md").read_text()
    assert all(f"| `{path}` |" in readme for path in documented)


def test_deployment_files_name_only_real_settings():
    # Every DUALDISTILL_ name written anywhere in the deployment files is a ServerConfig variable, or the
    # training client's key (as the trainer reads it).
    allowed = server_env_names() | {API_KEY_ENV}
    files = [
        ROOT / "Dockerfile",
        ROOT / "docker-compose.yml",
        ROOT / ".env.example",
        *CHART_DIR.rglob("*.yaml"),
        *CHART_DIR.rglob("*.tpl"),
        *CHART_DIR.rglob("*.txt"),
    ]
    for path in files:
        names = set(re.findall(r"DUALDISTILL_[A-Z0-9_]+", path.read_text()))
        assert names <= allowed, f"{path.relative_to(ROOT)}: {names - allowed}"


def test_documented_models_variable_form_parses():
    # docs/deploy.md tells users to give DUALDISTILL_MODELS comma-separated; the deployment files use --model.
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert "(`teacher=/models/teacher,reference=/models/sft`)" in doc
    config = server_config_from_env({"DUALDISTILL_MODELS": "teacher=/models/teacher,reference=/models/sft"})
    assert config.model_specs() == [("teacher", "/models/teacher"), ("reference", "/models/sft")]
