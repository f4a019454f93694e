"""The Helm chart, linted and rendered by Helm's own engine (helm-python-sdk, no helm binary), every
manifest validated against the Kubernetes schemas (kubernetes-validate, strict), and the rendered
Deployment checked against the server's real CLI parser and ServerConfig."""

from __future__ import annotations

import json

import helm_python
import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.support import (
    CHART_DIR,
    CI_VALUES,
    ENV_PREFIX,
    RELEASE,
    load_values,
    notes,
    only,
    parse_cli,
    render,
    serve_config,
    server_env_names,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator ships.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
# Custom resources have no schema in kubernetes-validate; they get explicit checks below instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
VALUE_SETS = {"default": {}, **{path.stem: load_values(path) for path in CI_VALUES}}


def value_sets():
    return pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))


def teacher(manifests: list[dict]) -> dict:
    deployment = only(manifests, "Deployment", RELEASE + "-dualdistill")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def configmap_env(manifests: list[dict]) -> dict[str, str]:
    return only(manifests, "ConfigMap")["data"]


def test_value_sets_cover_gpu_redis_hpa_and_existing_secret():
    assert {"gpu-values", "redis-values", "hpa-values", "existing-secret-values"} <= set(VALUE_SETS)


@value_sets()
def test_lint_is_clean(values):
    report = helm_python.lint(CHART_DIR, values, strict=True)
    assert report["errors"] == []
    # Severity 2 and 3 are warnings and errors; 1 is advice such as "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@value_sets()
def test_manifests_validate_against_kubernetes_schemas(values):
    manifests = render(values)
    assert manifests
    for manifest in manifests:
        body = {k: v for k, v in manifest.items() if k != "_template"}
        if (body["apiVersion"], body["kind"]) in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(body, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(map(str, exc.path))
                pytest.fail(f"{manifest['_template']} {body['kind']} on {version}: {path}: {exc.message}")


def test_kubernetes_validation_catches_a_mistake():
    # Strict mode is what makes the check above worth running: a misspelt field fails.
    deployment = {k: v for k, v in only(render({}), "Deployment").items() if k != "_template"}
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbee"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessProbee"):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


@value_sets()
def test_values_schema_accepts_the_values(values):
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    with helm_python.Chart.load(CHART_DIR) as chart:
        merged = chart.merge_values(values)
        chart.validate_schema(merged)  # Helm's own schema check
    jsonschema.Draft7Validator(schema).validate(merged)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"server": {"settings": {"max_top_kk": 5}}}, "max_top_kk"),  # a typo
        ({"server": {"settings": {"max_top_k": 0}}}, "max_top_k"),  # ServerConfig's bound
        ({"server": {"settings": {"http_port": 9000}}}, "http_port"),  # owned by server.httpPort
        ({"models": []}, "models"),
        ({"gpu": {"count": -1}}, "count"),
    ],
)
def test_values_schema_rejects_mistakes(bad, message):
    with (
        helm_python.Chart.load(CHART_DIR) as chart,
        pytest.raises(helm_python.HelmValuesError, match=message),
    ):
        chart.render(bad, name=RELEASE, namespace="distill")


def test_grace_period_shorter_than_the_drain_is_refused():
    with (
        helm_python.Chart.load(CHART_DIR) as chart,
        pytest.raises(helm_python.HelmRenderError, match="must exceed"),
    ):
        chart.render({"server": {"terminationGracePeriodSeconds": 30}}, name=RELEASE, namespace="distill")


@value_sets()
def test_container_runs_serve_with_serverconfig_environment(values):
    manifests = render(values)
    container = teacher(manifests)
    env = configmap_env(manifests)
    assert set(env) <= server_env_names(), set(env) - server_env_names()
    assert not [e for e in container.get("env", []) if e["name"].startswith(ENV_PREFIX)]
    assert parse_cli(container["args"]).command == "serve"
    config = serve_config(container["args"], env)
    merged = {**load_values(CHART_DIR / "values.yaml"), **values}
    assert [f"{n}={p}" for n, p in config.model_specs()] == [
        f"{m['name']}={m['path']}" for m in merged["models"]
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.http_port, "grpc": config.grpc_port}
    assert config.host == "0.0.0.0"


@value_sets()
def test_probes_ports_and_drain_line_up(values):
    manifests = render(values)
    container = teacher(manifests)
    config = serve_config(container["args"], configmap_env(manifests))
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "minutes for a slow model load"
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    pod = only(manifests, "Deployment", RELEASE + "-dualdistill")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.drain_seconds + float(sleep[1])
    service = only(manifests, "Service", RELEASE + "-dualdistill")
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert by_name["http"]["targetPort"] == "http" and by_name["http"]["appProtocol"] == "http"
    assert by_name["grpc"]["targetPort"] == "grpc" and by_name["grpc"]["appProtocol"]
    assert by_name["http"]["port"] == config.http_port and by_name["grpc"]["port"] == config.grpc_port


def test_chart_defaults_are_the_server_defaults():
    from dualdistill_server.config import ServerConfig

    defaults = load_values(CHART_DIR / "values.yaml")["server"]
    fields = ServerConfig.model_fields
    assert defaults["httpPort"] == fields["http_port"].default
    assert defaults["grpcPort"] == fields["grpc_port"].default
    assert defaults["drainSeconds"] == fields["drain_seconds"].default


@value_sets()
def test_selectors_match_the_teacher_pods(values):
    manifests = render(values)
    deployment = only(manifests, "Deployment", RELEASE + "-dualdistill")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for m in manifests:
        selector = None
        if m["kind"] == "Service" and not m["metadata"]["name"].endswith("-redis"):
            selector = m["spec"]["selector"]
        elif m["kind"] in ("PodDisruptionBudget",):
            selector = m["spec"]["selector"]["matchLabels"]
        elif m["kind"] == "NetworkPolicy" and not m["metadata"]["name"].endswith("-redis"):
            selector = m["spec"]["podSelector"]["matchLabels"]
        if selector is not None:
            assert selector.items() <= pod_labels.items(), m["metadata"]["name"]


@value_sets()
def test_init_containers_prepare_with_the_cli(values):
    manifests = render(values)
    pod = only(manifests, "Deployment", RELEASE + "-dualdistill")["spec"]["template"]["spec"]
    for init in pod.get("initContainers", []):
        assert init["command"] == ["dualdistill"]
        args = parse_cli(init["args"])
        assert init["args"][:2] == ["models", "prepare"] and args.command == "models"
        mounts = {v["mountPath"]: v for v in init["volumeMounts"]}
        assert init["args"][-1].startswith(next(p for p in mounts if mounts[p]["name"] == "models"))


def test_default_secret_holds_one_generated_key():
    manifests = render({})
    secret = only(manifests, "Secret")
    (line,) = secret["stringData"]["api-keys"].strip().splitlines()
    tenant, key = line.split(":", 1)
    assert tenant == "default" and len(key) == 40
    env = configmap_env(manifests)
    container = teacher(manifests)
    mount = next(v for v in container["volumeMounts"] if v["name"] == "api-keys")
    assert env["DUALDISTILL_API_KEY_FILE"] == mount["mountPath"] + "/api-keys"


def test_given_keys_become_tenant_lines():
    manifests = render({"auth": {"apiKeys": {"student-a": "a" * 24, "student-b": "b" * 24}}})
    lines = only(manifests, "Secret")["stringData"]["api-keys"].strip().splitlines()
    assert lines == [f"student-a:{'a' * 24}", f"student-b:{'b' * 24}"]


def test_existing_secret_is_mounted_not_created():
    values = VALUE_SETS["existing-secret-values"]
    manifests = render(values)
    assert not [m for m in manifests if m["kind"] == "Secret"]
    pod = only(manifests, "Deployment", RELEASE + "-dualdistill")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"] == {
        "secretName": "teacher-keys",
        "items": [{"key": "tenants", "path": "api-keys"}],
    }
    config = serve_config(teacher(manifests)["args"], configmap_env(manifests))
    assert config.tenant_max_concurrency == 8 and config.log_level == "debug"


def test_gpu_values_request_a_gpu_and_cuda():
    manifests = render(VALUE_SETS["gpu-values"])
    container = teacher(manifests)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["memory"] == "32Gi"
    config = serve_config(container["args"], configmap_env(manifests))
    assert (config.device, config.dtype) == ("cuda", "bfloat16")
    pod = only(manifests, "Deployment", RELEASE + "-dualdistill")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "nvidia.com/gpu" not in str(teacher(render({}))["resources"])


def test_redis_values_share_one_cache_between_replicas():
    manifests = render(VALUE_SETS["redis-values"])
    config = serve_config(teacher(manifests)["args"], configmap_env(manifests))
    redis_service = only(manifests, "Service", "-redis")
    port = redis_service["spec"]["ports"][0]["port"]
    assert config.cache == f"redis://{redis_service['metadata']['name']}:{port}/0"
    assert only(manifests, "Deployment", RELEASE + "-dualdistill")["spec"]["replicas"] == 2
    redis_pods = only(manifests, "Deployment", "-redis")["spec"]["template"]["metadata"]["labels"]
    assert redis_service["spec"]["selector"].items() <= redis_pods.items()
    policy = only(manifests, "NetworkPolicy", "-redis")
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    teacher_pods = only(manifests, "Deployment", RELEASE + "-dualdistill")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert allowed.items() <= teacher_pods.items() and not allowed.items() <= redis_pods.items()
    monitor = only(manifests, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    monitored = [
        m
        for m in manifests
        if m["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= m["metadata"]["labels"].items()
    ]
    assert [m["metadata"]["name"] for m in monitored] == [RELEASE + "-dualdistill"], "each pod scraped once"


def test_hpa_values_scale_the_deployment():
    manifests = render(VALUE_SETS["hpa-values"])
    deployment = only(manifests, "Deployment", RELEASE + "-dualdistill")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = only(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    config = serve_config(teacher(manifests)["args"], configmap_env(manifests))
    assert config.cache == "redis://redis-master.cache.svc:6379/2" and config.drain_seconds == 60
    assert not [m for m in manifests if m["metadata"]["name"].endswith("-redis")]
    assert only(manifests, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_helm_test_hook_lists_the_models():
    manifests = render({})
    pod = only(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    service = only(manifests, "Service", RELEASE + "-dualdistill")
    http_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    assert env["TEACHER_URL"] == f"http://{service['metadata']['name']}:{http_port}"
    assert env["EXPECTED_MODELS"] == "smollm2"
    assert env["API_KEY_FILE"] == "/etc/dualdistill/api-keys"
    compile(container["args"][0], "helm-test", "exec")  # runs for real in test_examples.py
    assert "/v1/models" in container["args"][0]


def test_notes_show_how_to_reach_the_service():
    text = notes({})
    assert f"port-forward svc/{RELEASE}-dualdistill 8000 50051" in text
    assert "Bearer $KEY" in text and f"helm test {RELEASE}" in text
