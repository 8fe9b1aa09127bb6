"""The Kubernetes manifests in config/k8s agree with the proxy: ports, paths, the config mount, probes.

Every manifest is parsed as Kubernetes would read it (YAML documents); the ConfigMap's `proxy.yaml` is
validated by the proxy's own loader with the environment the pod gives the sidecar, and every number
the manifests repeat (ports, drain timeout, config path) is compared with its source of truth.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.config.model import ConfigError, ProxyConfig, load_config
from proxy.mcp.headers import HostPolicy

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "config" / "k8s"
NAMESPACE = "team-a"  # what the downward API would give POD_NAMESPACE in the test's pretend namespace
SIDECAR = "mcp-resilience-proxy"
APP = "mcp-server"


def _documents() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        for path in sorted(K8S.glob("*.yaml"))
    }


DOCS = _documents()


def _one(kind: str) -> dict[str, Any]:
    found = [d for docs in DOCS.values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _entrypoint() -> list[str]:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines()
    lines = [line for line in dockerfile if line.startswith("ENTRYPOINT ")]
    assert len(lines) == 1
    command = json.loads(lines[0].removeprefix("ENTRYPOINT "))
    assert isinstance(command, list)
    return command


def _config_path() -> str:
    command = _entrypoint()
    return command[command.index("--config") + 1]


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _sidecar() -> dict[str, Any]:
    (container,) = [c for c in _pod_spec()["initContainers"] if c["name"] == SIDECAR]
    assert isinstance(container, dict)
    return container


def _app() -> dict[str, Any]:
    (container,) = [c for c in _pod_spec()["containers"] if c["name"] == APP]
    assert isinstance(container, dict)
    return container


def _pod_env(container: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, str]:
    """The environment the kubelet gives `container`: literal values and the downward API's namespace."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, var
            env[var["name"]] = namespace
    return env


def _config_text() -> str:
    return str(_one("ConfigMap")["data"][posixpath.basename(_config_path())])


def _pod_config(namespace: str = NAMESPACE) -> ProxyConfig:
    return load_config(_config_text(), _pod_env(_sidecar(), namespace))


def _named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _resolve_port(container: dict[str, Any], port: int | str) -> int:
    return port if isinstance(port, int) else _named_ports(container)[port]


def test_every_manifest_parses_and_the_kustomization_lists_them_all() -> None:
    assert sorted(DOCS) == ["configmap.yaml", "deployment.yaml", "kustomization.yaml", "service.yaml"]
    for name, docs in DOCS.items():
        assert len(docs) == 1, name
        assert {"apiVersion", "kind"} <= docs[0].keys(), name
    kustomization = _one("Kustomization")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["resources"] == ["configmap.yaml", "deployment.yaml", "service.yaml"]
    assert "configMapGenerator" not in kustomization  # a hashed name would roll the pod instead of hot reload
    resources = ("configmap.yaml", "deployment.yaml", "service.yaml")
    assert [(d["kind"], d["metadata"]["name"]) for n in resources for d in DOCS[n]] == [
        ("ConfigMap", "mcp-resilience-proxy"),
        ("Deployment", "mcp-server"),
        ("Service", "mcp-server"),
    ]


def test_configmap_config_validates_with_the_pod_environment() -> None:
    config = _pod_config()
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8080)
    assert (config.admin.host, config.admin.port) == ("0.0.0.0", 9901)
    assert config.drain_timeout == 20.0
    assert config.reload.watch is True
    (upstream,) = config.upstreams
    assert (upstream.name, upstream.path, upstream.trust_annotations) == ("app", "/mcp", False)
    assert upstream.retry.max_attempts == 3
    assert upstream.retry.retry_on == ("connect_error", "timeout", "http_5xx", "http_429", "server_error")
    breaker = upstream.breaker
    assert (breaker.enabled, breaker.scope, breaker.failure_threshold, breaker.half_open_max_calls) == (True, "upstream", 5, 1)
    assert breaker.reset_timeout == 30.0
    assert upstream.cache is not None
    assert (upstream.cache.mode, upstream.cache.scope, upstream.cache.max_stale) == ("fallback", "private", 600.0)


def test_configmap_config_refuses_to_start_without_the_pod_namespace() -> None:
    env = _pod_env(_sidecar())
    del env["POD_NAMESPACE"]
    with pytest.raises(ConfigError) as caught:
        load_config(_config_text(), env)
    assert caught.value.errors == [
        f"security.allowed_hosts[{i}]: environment variable POD_NAMESPACE is not set" for i in (1, 2, 3)
    ]


@pytest.mark.parametrize("namespace", ["default", NAMESPACE])
def test_allowed_hosts_are_the_service_names_in_the_pods_namespace_and_loopback(namespace: str) -> None:
    config = _pod_config(namespace)
    service = _one("Service")["metadata"]["name"]
    assert config.security.allowed_hosts == (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "[::1]",
        "::1",
    )
    policy = HostPolicy(config.security.allowed_hosts, config.security.allowed_origins)
    assert policy.host_allowed(service) is True
    assert policy.host_allowed(f"{service}.{namespace}.svc.cluster.local:80") is True
    assert policy.host_allowed("127.0.0.1:8080") is True
    assert policy.host_allowed(f"{service}.elsewhere.svc") is False
    assert policy.host_allowed("attacker.example") is False


def test_sidecar_is_a_native_sidecar_running_the_image_entrypoint() -> None:
    spec = _pod_spec()
    assert [c["name"] for c in spec["initContainers"]] == [SIDECAR]
    assert [c["name"] for c in spec["containers"]] == [APP]
    sidecar = _sidecar()
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "mcp-resilience-proxy:latest"
    assert sidecar["imagePullPolicy"] == "IfNotPresent"
    assert sidecar["command"] == _entrypoint()
    assert "args" not in sidecar  # args would be appended to the entrypoint


def test_container_ports_are_the_configs_listen_and_admin_ports() -> None:
    config = _pod_config()
    assert _named_ports(_sidecar()) == {"mcp": config.listen.port, "admin": config.admin.port}
    assert all(p["protocol"] == "TCP" for p in _sidecar()["ports"])


def test_probes_hit_healthz_and_readyz_on_the_admin_port() -> None:
    sidecar, admin_port = _sidecar(), _pod_config().admin.port
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = sidecar[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _resolve_port(sidecar, get["port"]) == admin_port, probe
        assert get.get("scheme", "HTTP") == "HTTP", probe
    # The app starts only after the sidecar's startup probe passes: it must not wait for the app.
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_service_targets_the_proxys_mcp_listen_port() -> None:
    service = _one("Service")
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = {"app.kubernetes.io/name": "mcp-server"}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"] == selector
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"], port["protocol"]) == ("mcp", 80, "mcp", "TCP")
    assert _resolve_port(_sidecar(), port["targetPort"]) == _pod_config().listen.port


def test_config_is_mounted_as_the_configmap_directory_at_the_entrypoints_config_dir() -> None:
    spec, sidecar, config_path = _pod_spec(), _sidecar(), _config_path()
    assert config_path == "/etc/mcp-resilience-proxy/proxy.yaml"
    (mount,) = [m for m in sidecar["volumeMounts"] if m["name"] == "config"]
    assert mount == {"name": "config", "mountPath": posixpath.dirname(config_path), "readOnly": True}  # no subPath
    assert all("subPath" not in m and "subPathExpr" not in m for m in sidecar["volumeMounts"])
    (volume,) = [v for v in spec["volumes"] if v["name"] == "config"]
    assert volume == {"name": "config", "configMap": {"name": _one("ConfigMap")["metadata"]["name"]}}  # no items remap
    assert list(_one("ConfigMap")["data"]) == [posixpath.basename(config_path)]


def test_tmp_is_a_bounded_emptydir() -> None:
    (mount,) = [m for m in _sidecar()["volumeMounts"] if m["name"] == "tmp"]
    assert mount == {"name": "tmp", "mountPath": "/tmp"}
    (volume,) = [v for v in _pod_spec()["volumes"] if v["name"] == "tmp"]
    assert volume == {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}


def test_security_context_is_restricted_and_matches_the_image_user() -> None:
    assert _pod_spec()["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert _pod_spec()["automountServiceAccountToken"] is False
    assert _sidecar()["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "USER 10001:10001" in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines()
    app = _app()["securityContext"]
    assert (app["allowPrivilegeEscalation"], app["capabilities"], app["runAsNonRoot"]) == (False, {"drop": ["ALL"]}, True)


def test_resources_have_requests_and_limits() -> None:
    assert _sidecar()["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "256Mi"},
    }
    assert set(_app()["resources"]) == {"requests", "limits"}


def test_grace_period_outlasts_the_apps_pre_stop_pause_plus_the_proxys_drain() -> None:
    grace = _pod_spec()["terminationGracePeriodSeconds"]
    pre_stop = _app()["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = _pod_config().drain_timeout
    assert (grace, pre_stop, drain) == (45, 5, 20.0)
    assert grace > pre_stop + drain
    assert grace > drain
    assert "lifecycle" not in _sidecar()  # the sidecar is stopped only after the app has exited


@pytest.mark.parametrize("with_env", [True, False], ids=["pod-env", "file-default"])
def test_upstream_url_is_the_app_containers_port_on_loopback(with_env: bool) -> None:
    env = _pod_env(_sidecar())
    if not with_env:
        del env["MCP_UPSTREAM_URL"]
    (upstream,) = load_config(_config_text(), env).upstreams
    url = urlsplit(upstream.url)
    app_port = _named_ports(_app())["app"]
    assert (url.scheme, url.hostname, url.port, url.path) == ("http", "127.0.0.1", app_port, "/mcp")
    assert _named_ports(_app()) == {"app": 3000}
    assert _app()["image"] == "ghcr.io/example/mcp-server:latest"
