"""docker-compose.yml: valid against the Compose Specification schema (as shipped by the
`check-jsonschema` package), every `dualdistill` command parses, and the services fit together."""

from __future__ import annotations

import importlib.resources
import json
import re

import jsonschema
import pytest
import yaml

from dualdistill.trainer.config import API_KEY_ENV
from tests.deploy.support import (
    ENV_PREFIX,
    ROOT,
    MissingVariable,
    compose_env_list,
    dockerfile_commands,
    interpolate,
    parse_cli,
    read_env_file,
    serve_config,
    server_env_names,
)

COMPOSE = ROOT / "docker-compose.yml"
KEYS = {"STUDENT_A_API_KEY": "key-a-0123456789abcdef", "STUDENT_B_API_KEY": "key-b-0123456789abcdef"}
STUDENTS = ("student-a", "student-b")


def compose_schema() -> dict:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json"
    )
    return json.loads(resource.read_text())


def load(env: dict[str, str] | None = None) -> dict:
    """The Compose file as `docker compose config` would see it with .env.example plus the two keys."""
    values = {**read_env_file(ROOT / ".env.example"), **KEYS} if env is None else env
    return yaml.safe_load(interpolate(COMPOSE.read_text(), values))


@pytest.fixture(scope="module")
def compose() -> dict:
    return load()


def image_env() -> dict[str, str]:
    env = {}
    after_last_from = False
    for command in dockerfile_commands():
        if command.cmd == "FROM":
            env, after_last_from = {}, True
        elif command.cmd == "ENV" and after_last_from:
            env.update(dict(zip(command.value[0::2], command.value[1::2], strict=True)))
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}


def our_services(compose: dict) -> dict[str, dict]:
    """Services that run the dualdistill image (and so the `dualdistill` CLI through its entrypoint)."""
    image = compose["services"]["teacher"]["image"]
    return {name: svc for name, svc in compose["services"].items() if svc.get("image") == image}


def test_valid_against_the_compose_specification(compose):
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_schema_check_catches_a_mistake(compose):
    # The schema is strict enough to be worth running: a misspelt key is refused.
    broken = json.loads(json.dumps(compose))
    broken["services"]["teacher"]["depends_onn"] = broken["services"]["teacher"].pop("depends_on")
    schema = compose_schema()
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(broken)


@pytest.mark.parametrize("missing", sorted(KEYS))
def test_refuses_to_start_without_each_student_key(missing):
    env = {**read_env_file(ROOT / ".env.example"), **KEYS, missing: ""}
    with pytest.raises(MissingVariable, match=missing):
        load(env)


def test_every_dualdistill_command_parses(compose):
    services = our_services(compose)
    assert set(services) == {"teacher", "teacher-vllm", *STUDENTS}
    commands = {name: parse_cli(svc["command"]).command for name, svc in services.items()}
    assert commands == {"teacher": "serve", "teacher-vllm": "serve", "student-a": "train", "student-b": "train"}


def test_vllm_profile_serves_the_teacher_tensor_parallel_on_gpus(compose):
    teacher = compose["services"]["teacher-vllm"]
    assert teacher["profiles"] == ["vllm"] and "vllm" not in compose["services"]["teacher"].get("profiles", [])
    env = {k: v for k, v in compose_env_list(teacher["environment"]).items() if k.startswith(ENV_PREFIX)}
    assert set(env) <= server_env_names(), set(env) - server_env_names()
    config = serve_config(teacher["command"], {**image_env(), **env})
    assert config.engine == "vllm" and config.engine_args["tensor_parallel_size"] == 1
    assert config.cache.startswith("redis://redis:6379/")
    (device,) = teacher["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and teacher["shm_size"]


def test_students_use_the_pinned_training_flags(compose):
    for name in STUDENTS:
        args = compose["services"][name]["command"]
        assert args == [
            "train",
            "--config",
            "/config/train.yaml",
            "--teacher-url",
            "http://teacher:8000",
            "--pairs",
            "/data/pairs.jsonl",
            "--student",
            "/models/student",
            "--output-dir",
            "/checkpoints",
            "--resume",
        ]


def test_teacher_environment_is_serverconfig(compose):
    teacher = compose["services"]["teacher"]
    env = compose_env_list(teacher["environment"])
    ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert set(ours) <= server_env_names(), set(ours) - server_env_names()
    config = serve_config(teacher["command"], {**image_env(), **ours})
    assert [name for name, _ in config.model_specs()] == ["teacher", "reference"]
    assert config.cache == "redis://redis:6379/0"
    tenants = dict(pair.split(":", 1) for pair in config.api_keys.split(","))
    assert tenants == {"student-a": KEYS["STUDENT_A_API_KEY"], "student-b": KEYS["STUDENT_B_API_KEY"]}
    # Host port mappings land on the ports the server listens on.
    targets = {int(str(p).rsplit(":", 1)[1]) for p in teacher["ports"]}
    assert targets == {config.http_port, config.grpc_port}
    assert "redis" in compose["services"] and config.cache.split("//")[1].startswith("redis:6379")


def test_students_get_only_their_own_key_data_and_checkpoints(compose):
    seen_volumes = []
    for name, key in zip(STUDENTS, ("STUDENT_A_API_KEY", "STUDENT_B_API_KEY"), strict=True):
        student = compose["services"][name]
        env = compose_env_list(student["environment"])
        # The training client's key variable, as the trainer reads it; no server settings here.
        assert env == {API_KEY_ENV: KEYS[key]}
        mounts = {v.split(":")[1]: v.split(":")[0] for v in student["volumes"]}
        assert set(mounts) == {"/config", "/data", "/models/student", "/checkpoints"}
        seen_volumes.append(mounts)
        assert mounts["/checkpoints"] in compose["volumes"], "checkpoints on a named volume of their own"
    a, b = seen_volumes
    assert all(a[path] != b[path] for path in a), "the two students share no data, model or checkpoint volume"


def test_start_order_waits_for_health(compose):
    services = compose["services"]
    assert services["teacher"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    for name in STUDENTS:
        assert services[name]["depends_on"] == {"teacher": {"condition": "service_healthy"}}
        assert services[name]["healthcheck"] == {"disable": True}, "no server runs in a training container"
    # The teacher is healthy when it is *ready* (all models loaded), on the port the server uses.
    test = services["teacher"]["healthcheck"]["test"]
    port = int(image_env()["DUALDISTILL_HTTP_PORT"])
    assert test[0] == "CMD" and f"127.0.0.1:{port}/readyz" in test[-1]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def _seconds(duration: str) -> float:
    total, units = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(number) * units[unit]
    return total


def test_stop_grace_exceeds_the_drain(compose):
    teacher = compose["services"]["teacher"]
    drain = float(compose_env_list(teacher["environment"])["DUALDISTILL_DRAIN_SECONDS"])
    assert _seconds(teacher["stop_grace_period"]) > drain
    assert _seconds(teacher["healthcheck"]["start_period"]) >= 600, "model loading may take minutes"
