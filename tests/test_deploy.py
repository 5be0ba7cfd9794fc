"""The Kubernetes manifests: rendered by kustomize, checked against the API schemas and the gateway's needs.

Rendering needs `kubectl` (its built-in kustomize); the schemas ship inside the kubernetes-validate package,
so nothing here talks to a cluster or the network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import Config, load_config
from gateway.logs import UPLOAD_GRACE_S

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "base"
OVERLAY = ROOT / "deploy" / "overlays" / "example"
SECRETS_EXAMPLE = ROOT / "deploy" / "secrets.yaml.example"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"

# The Kubernetes minor versions docs/OPERATIONS.md promises: every object is validated against each.
# 1.30 is the oldest because the preStop `sleep` action is on by default from 1.30.
K8S_VERSIONS = [f"1.{minor}" for minor in range(30, 38)]

CONFIG_MOUNT = "/etc/open-llm-proxy"
SPOOL = "/var/spool/open-llm-proxy"
UID = 10001
# The environment variables the gateway reads that are secret, so belong in the Secret.
SECRET_ENV = {
    "PROXY_KEY",
    "PROXY_KEYS_EXTRA",
    "NRP_API_KEY",
    "OPENROUTER_KEY",
    "NIMBUS_API_KEY",
    "NIMBUS_ENDPOINT",
    "CACHE_SALT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
Manifest = dict[str, Any]


def render(kustomization: Path) -> list[Manifest]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not on PATH: it is needed to render deploy/ with kustomize (kubectl kustomize)"
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(kustomization)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def overlay() -> list[Manifest]:
    return render(OVERLAY)


@pytest.fixture(scope="module")
def base() -> list[Manifest]:
    return render(BASE)


@pytest.fixture(scope="module")
def secret_keys() -> set[str]:
    secret = yaml.safe_load(SECRETS_EXAMPLE.read_text())
    assert secret["kind"] == "Secret"
    return set(secret["stringData"])


def one(objects: list[Manifest], kind: str) -> Manifest:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(objects: list[Manifest]) -> Manifest:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def container(objects: list[Manifest]) -> Manifest:
    containers = pod_spec(objects)["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(objects: list[Manifest]) -> dict[str, Manifest]:
    return {e["name"]: e for e in container(objects)["env"]}


def rendered_config(objects: list[Manifest], tmp_path: Path) -> tuple[Path, Config]:
    """The config file the pods mount, written out, and parsed by the gateway itself."""
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "config")
    configmap = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"]
    )
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    return path, load_config(path)


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, f"not a duration: {value!r}"
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return int(match.group(1)) * scale


def size_bytes(value: str) -> int:
    """Kubernetes quantities (Ki, Mi, Gi) and nginx sizes (k, m, g); both count in powers of 1024 here."""
    match = re.fullmatch(r"(\d+)([kmg]?)i?", value.lower())
    assert match, f"not a size: {value!r}"
    return int(match.group(1)) * 1024 ** "_kmg".index(match.group(2) or "_")


def all_manifests(objects: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for obj in objects:
        yield f"{obj['kind']}/{obj['metadata']['name']}", obj


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_for_each_promised_kubernetes_version(
    version: str, overlay: list[Manifest], base: list[Manifest]
) -> None:
    secret = yaml.safe_load(SECRETS_EXAMPLE.read_text())
    for name, obj in [*all_manifests(overlay), *all_manifests(base), ("secrets.yaml.example", secret)]:
        try:
            checked = kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{name} is not valid for Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc}"
            )
        # validate() silently falls back to an older schema when it lacks the one asked for.
        assert checked == version, f"kubernetes-validate has no {version} schema (used {checked})"


def test_operations_doc_promises_exactly_the_tested_versions() -> None:
    text = OPERATIONS.read_text()
    assert f"Kubernetes {K8S_VERSIONS[0]} to {K8S_VERSIONS[-1]}" in text


def test_overlay_renders_the_whole_deployment_into_its_namespace(overlay: list[Manifest]) -> None:
    kinds = sorted(o["kind"] for o in overlay)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Ingress",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
        ]
    )
    assert {o["metadata"]["namespace"] for o in overlay} == {"biodiversity-lab"}


def test_image_is_the_overlays_and_pinned(overlay: list[Manifest], base: list[Manifest]) -> None:
    image = container(overlay)["image"]
    name, _, tag = image.rpartition(":")
    assert name and "/" in name, image
    assert tag and tag != "latest", image
    assert container(base)["image"].endswith(f":{tag}")


def test_pod_and_container_run_unprivileged(overlay: list[Manifest]) -> None:
    spec = pod_spec(overlay)
    assert spec["automountServiceAccountToken"] is False
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == UID
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(overlay)["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == UID
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}


def test_containerfile_runs_as_the_uid_the_pod_demands() -> None:
    text = (ROOT / "Containerfile").read_text()
    assert re.search(rf"^USER {UID}(:{UID})?$", text, re.M)
    assert f"VOLUME {SPOOL}" in text


def test_probes_hit_the_gateways_routes_on_its_port(overlay: list[Manifest]) -> None:
    c = container(overlay)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080}
    expected = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert (get["path"], ports[get["port"]]) == (path, 8080), probe
    # Startup gets a minute; readiness reacts faster than liveness so draining pods leave the Service first.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert (
        ready["periodSeconds"] * ready["failureThreshold"] < live["periodSeconds"] * live["failureThreshold"]
    )


def test_service_and_ingress_reach_the_pods(overlay: list[Manifest]) -> None:
    pod_labels = one(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(overlay, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    backend = one(overlay, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert (
        one(overlay, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    )
    policy = one(overlay, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
    assert policy.items() <= pod_labels.items()


def test_volumes_and_mounts_match_the_gateways_paths(overlay: list[Manifest], tmp_path: Path) -> None:
    spec, c, env = pod_spec(overlay), container(overlay), env_of(overlay)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert volumes.keys() == mounts.keys() == {"config", "spool", "tmp"}

    configmaps = {o["metadata"]["name"]: o for o in overlay if o["kind"] == "ConfigMap"}
    config_name = volumes["config"]["configMap"]["name"]
    assert config_name in configmaps, "the Deployment must mount the generated (hash-named) ConfigMap"
    assert re.fullmatch(r"open-llm-proxy-config-[a-z0-9]{10}", config_name)
    assert mounts["config"] == {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}
    assert env["PROXY_CONFIG"]["value"] == f"{CONFIG_MOUNT}/config.yaml"
    assert "config.yaml" in configmaps[config_name]["data"]

    assert mounts["spool"]["mountPath"] == env["LOG_SPOOL_DIR"]["value"] == SPOOL
    assert mounts["tmp"]["mountPath"] == "/tmp"
    _, config = rendered_config(overlay, tmp_path)
    spool_limit = size_bytes(volumes["spool"]["emptyDir"]["sizeLimit"])
    # The gateway's own spool cap must bite before the kubelet evicts the pod for filling the emptyDir.
    assert spool_limit >= config.logging.spool_max_bytes + 2 * config.logging.chunk_max_bytes
    assert size_bytes(volumes["tmp"]["emptyDir"]["sizeLimit"]) > 0


def test_secrets_example_lists_every_secret_the_gateway_reads(
    secret_keys: set[str], overlay: list[Manifest], tmp_path: Path
) -> None:
    assert secret_keys >= SECRET_ENV
    assert any(re.fullmatch(r"PROXY_KEY_[A-Z0-9_]+", k) for k in secret_keys), "show a named key"
    _, config = rendered_config(overlay, tmp_path)
    key_envs = {p.get("api_key_env") for p in config.providers.values()} - {None}
    assert key_envs <= secret_keys, "every provider's api_key_env needs a line in the Secret example"
    secret = yaml.safe_load(SECRETS_EXAMPLE.read_text())
    assert all(isinstance(v, str) and v for v in secret["stringData"].values())


def test_env_takes_keys_from_the_secret_and_logs_settings_from_the_overlay(
    overlay: list[Manifest], base: list[Manifest], secret_keys: set[str]
) -> None:
    secret_name = yaml.safe_load(SECRETS_EXAMPLE.read_text())["metadata"]["name"]
    c, env = container(overlay), env_of(overlay)
    refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs, "PROXY_KEY must come from the Secret"
    for ref in refs:
        assert ref["name"] == secret_name
        assert ref["key"] in secret_keys
        assert ref.get("optional", False) is False
    assert env["PROXY_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "PROXY_KEY"
    assert c["envFrom"] == [{"secretRef": {"name": secret_name}}]
    # No secret is ever written into the manifests.
    assert not (env.keys() & (SECRET_ENV - {"PROXY_KEY"}))
    assert all("value" not in e for name, e in env.items() if name in SECRET_ENV)

    base_env = env_of(base)
    for name in ("LOG_BUCKET", "AWS_S3_ENDPOINT_URL"):
        assert env[name]["value"], name
        assert env[name]["value"] != base_env[name]["value"], f"the overlay must set its own {name}"
    assert env["AWS_S3_ENDPOINT_URL"]["value"].startswith("https://")


def test_shutdown_budget_covers_prestop_drain_and_flush(overlay: list[Manifest], tmp_path: Path) -> None:
    spec, c = pod_spec(overlay), container(overlay)
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 5 <= pre_stop <= 10
    _, config = rendered_config(overlay, tmp_path)
    # SIGKILL must not cut the last upload short: that chunk would die with the pod's emptyDir.
    budget = pre_stop + config.server.drain_timeout_s + UPLOAD_GRACE_S
    assert spec["terminationGracePeriodSeconds"] >= budget


def test_rollouts_keep_capacity_and_the_autoscaler_owns_replicas(overlay: list[Manifest]) -> None:
    deployment = one(overlay, "Deployment")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert "replicas" not in deployment["spec"]
    hpa = one(overlay, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "open-llm-proxy"}
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert one(overlay, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert hpa["minReplicas"] > 1, "with minAvailable 1, one replica would block node drains"


def test_resources_request_cpu_and_memory_and_cap_memory(overlay: list[Manifest]) -> None:
    resources = container(overlay)["resources"]
    assert size_bytes(resources["requests"]["memory"]) >= 128 * 1024**2
    assert resources["requests"]["cpu"], "the HPA's utilisation is measured against the CPU request"
    assert size_bytes(resources["limits"]["memory"]) >= 4 * size_bytes(resources["requests"]["memory"])
    assert "cpu" not in resources["limits"], "a CPU limit throttles every stream in the pod"


def test_ingress_lets_long_streams_through_unbuffered(overlay: list[Manifest], tmp_path: Path) -> None:
    ingress = one(overlay, "Ingress")
    spec, notes = ingress["spec"], ingress["metadata"]["annotations"]
    assert spec["ingressClassName"] == "haproxy"
    hosts = [rule["host"] for rule in spec["rules"]]
    assert hosts == ["biodiversity-lab-llm.nrp-nautilus.io"]
    assert [tls["hosts"] for tls in spec["tls"]] == [hosts]
    assert all(tls["secretName"] for tls in spec["tls"])

    _, config = rendered_config(overlay, tmp_path)
    longest = max(1200.0, config.upstream.first_byte_timeout_s, config.upstream.idle_timeout_s)
    timeouts = [
        "haproxy.org/timeout-server",
        "haproxy.org/timeout-tunnel",
        "haproxy-ingress.github.io/timeout-server",
        "haproxy-ingress.github.io/timeout-tunnel",
        "nginx.ingress.kubernetes.io/proxy-read-timeout",
        "nginx.ingress.kubernetes.io/proxy-send-timeout",
    ]
    for name in timeouts:
        assert seconds(notes[name]) > longest, name
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    for name in ("nginx.ingress.kubernetes.io/proxy-body-size", "haproxy-ingress.github.io/proxy-body-size"):
        assert size_bytes(notes[name]) >= config.server.max_body_bytes, name


def test_network_policy_restricts_both_directions(overlay: list[Manifest]) -> None:
    spec = one(overlay, "NetworkPolicy")["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]

    [rule] = spec["ingress"]
    [source] = rule["from"]
    assert source.keys() == {"namespaceSelector"}, "only the ingress controller's namespace may connect"
    assert source["namespaceSelector"].keys() == {"matchLabels"}
    assert source["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "haproxy-controller"}
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]

    allowed = set()
    for egress in spec["egress"]:
        assert egress.get("ports"), "an egress rule without ports would allow everything"
        ports = {(p["port"], p["protocol"]) for p in egress["ports"]}
        allowed |= ports
        if any(port == 53 for port, _ in ports):
            assert egress["to"] == [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}
            ]
    assert allowed == {(53, "UDP"), (53, "TCP"), (443, "TCP")}


def test_base_config_is_a_copy_of_the_default_config() -> None:
    assert (BASE / "config.yaml").read_text() == (ROOT / "config" / "default.yaml").read_text(), (
        "deploy/base/config.yaml must stay identical to config/default.yaml: copy it over"
    )


@pytest.mark.parametrize("which", ["overlay", "base"])
def test_mounted_config_passes_check_config(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path, _ = rendered_config(request.getfixturevalue(which), tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"check-config rejected the {which}'s config:\n{done.stdout}{done.stderr}"
