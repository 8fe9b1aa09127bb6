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
from proxy.config.stdio import child_environment
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


def _stages() -> list[tuple[str, str, list[str]]]:
    """The Dockerfile's stages in order, each as (name, base, its instruction lines); the last is the
    default target (what `docker build` without --target builds)."""
    stages: list[tuple[str, str, list[str]]] = []
    for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("FROM "):
            words = line.split()
            assert len(words) == 4 and words[2] == "AS", f"every stage is named: {line!r}"
            stages.append((words[3], words[1], []))
        elif stages and line and not line.startswith("#"):
            stages[-1][2].append(line)
    return stages


def _stage(target: str | None) -> tuple[str, str, list[str]]:
    stages = _stages()
    if target is None:
        return stages[-1]
    (stage,) = [s for s in stages if s[0] == target]
    return stage


def _entrypoint(target: str | None = None) -> list[str]:
    """The ENTRYPOINT of a build target (the default target when None), inherited from its base stage."""
    _, base, lines = _stage(target)
    found = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert len(found) <= 1
    if not found:
        assert base in {s[0] for s in _stages()}, f"{target or 'the default target'} has no ENTRYPOINT"
        return _entrypoint(base)
    command = json.loads(found[0].removeprefix("ENTRYPOINT "))
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
    assert (breaker.enabled, breaker.scope, breaker.failure_threshold, breaker.half_open_max_calls) == (
        True,
        "upstream",
        5,
        1,
    )
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
    assert (app["allowPrivilegeEscalation"], app["capabilities"], app["runAsNonRoot"]) == (
        False,
        {"drop": ["ALL"]},
        True,
    )


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


# The stdio example (config/k8s/stdio): the MCP server is the proxy's child inside the proxy's container,
# which runs the Dockerfile's stdio-node target.

STDIO = K8S / "stdio"
STDIO_TARGET = "stdio-node"
STDIO_SERVER = "mcp-server-everything"  # what NPM_PACKAGES bakes into the image (deployment.yaml's build line)
STDIO_DOCS: dict[str, list[dict[str, Any]]] = {
    path.name: [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for path in sorted(STDIO.glob("*.yaml"))
}
SECRET_TOKEN = "token-from-the-secret"


def _stdio_one(kind: str) -> dict[str, Any]:
    found = [d for docs in STDIO_DOCS.values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _stdio_pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _stdio_one("Deployment")["spec"]["template"]["spec"]
    return spec


def _stdio_container() -> dict[str, Any]:
    (container,) = _stdio_pod_spec()["containers"]
    assert isinstance(container, dict)
    return container


def _stdio_pod_env(secret: str | None) -> dict[str, str]:
    """The container's environment as the kubelet builds it: the namespace from the downward API, and the
    optional Secret's value when `secret` exists (an optional secretKeyRef to a missing Secret sets nothing)."""
    env: dict[str, str] = {}
    for var in _stdio_container()["env"]:
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source == {"fieldRef": {"fieldPath": "metadata.namespace"}}, var
            env[var["name"]] = NAMESPACE
        else:
            assert source == {"secretKeyRef": {"name": "mcp-stdio", "key": "api-token", "optional": True}}, var
            if secret is not None:
                env[var["name"]] = secret
    return env


def _image_env(target: str) -> dict[str, str]:
    """HOME as the stdio target sets it (ENV lines of its stages) and a PATH like its own: what the child
    inherits from the container besides its configured env."""
    text = "\n".join(line for stage in _stages() if stage[0] in {"runtime", "stdio", target} for line in stage[2])
    home = text.split("HOME=", 1)[1].split()[0]
    return {"HOME": home, "PATH": "/opt/servers/bin:/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"}


@pytest.fixture
def image_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH that holds the server as the stdio-node image does (the config's program is looked up on
    PATH when it is loaded), and nothing else."""
    server = tmp_path / STDIO_SERVER
    server.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    server.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    return tmp_path


def _stdio_config_text() -> str:
    return str(_stdio_one("ConfigMap")["data"][posixpath.basename(_config_path())])


def test_stdio_manifests_parse_and_the_kustomization_lists_them_all() -> None:
    assert sorted(STDIO_DOCS) == ["configmap.yaml", "deployment.yaml", "kustomization.yaml", "service.yaml"]
    for name, docs in STDIO_DOCS.items():
        assert len(docs) == 1, name
    kustomization = _stdio_one("Kustomization")
    assert kustomization["resources"] == ["configmap.yaml", "deployment.yaml", "service.yaml"]
    assert "configMapGenerator" not in kustomization
    names = [(d["kind"], d["metadata"]["name"]) for n in kustomization["resources"] for d in STDIO_DOCS[n]]
    assert names == [("ConfigMap", "mcp-stdio-proxy"), ("Deployment", "mcp-stdio"), ("Service", "mcp-stdio")]
    # Its own names: both examples can live in one namespace.
    assert not set(names) & {(d["kind"], d.get("metadata", {}).get("name")) for docs in DOCS.values() for d in docs}


@pytest.mark.parametrize("name", ["configmap.yaml", "deployment.yaml", "service.yaml"])
def test_stdio_manifests_pass_the_kubernetes_1_30_schemas(name: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")  # installed by .ci/run
    (document,) = STDIO_DOCS[name]
    assert kubernetes_validate.validate(document, "1.30.0", strict=True) == "1.30"


def test_stdio_config_validates_with_the_pod_environment_and_the_images_path(image_path: Path) -> None:
    config = load_config(_stdio_config_text(), _stdio_pod_env(SECRET_TOKEN))
    assert (config.listen.port, config.admin.port, config.drain_timeout) == (8080, 9901, 20.0)
    (upstream,) = config.upstreams
    assert (upstream.name, upstream.url, upstream.path) == ("everything", None, "/mcp")
    assert upstream.command == (STDIO_SERVER, "stdio")
    assert (upstream.stderr, upstream.isolation) == ("log", "shared")
    assert (upstream.child.start_timeout, upstream.child.stop_grace) == (30.0, 2.0)
    service = _stdio_one("Service")["metadata"]["name"]
    assert config.security.allowed_hosts[:4] == (
        service,
        f"{service}.{NAMESPACE}",
        f"{service}.{NAMESPACE}.svc",
        f"{service}.{NAMESPACE}.svc.cluster.local",
    )


def test_stdio_config_is_refused_where_the_server_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default image has no Node and no server: the config is refused at load, not at the first call.
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        load_config(_stdio_config_text(), _stdio_pod_env(SECRET_TOKEN))
    assert caught.value.errors == [f"upstreams[0].command: {STDIO_SERVER!r} not found on PATH"]


@pytest.mark.parametrize("secret", [SECRET_TOKEN, None], ids=["secret", "no-secret"])
def test_the_secret_reaches_the_child_and_nothing_else_of_the_containers_environment_does(
    image_path: Path, secret: str | None
) -> None:
    pod_env = _stdio_pod_env(secret)
    (upstream,) = load_config(_stdio_config_text(), pod_env).upstreams
    container_env = {**_image_env(STDIO_TARGET), **pod_env, "PYTHONUNBUFFERED": "1", "MCP_PROXY_LISTEN_HOST": "0.0.0.0"}
    child = child_environment(upstream.env, container_env)
    assert child == {
        **_image_env(STDIO_TARGET),
        "EXAMPLE_API_TOKEN": secret or "",
        "NODE_OPTIONS": "--max-old-space-size=256",
    }


def test_stdio_container_runs_the_stdio_node_target_under_tini() -> None:
    spec, container = _stdio_pod_spec(), _stdio_container()
    assert "initContainers" not in spec  # the server is no container: the proxy is the pod's only one
    assert container["image"] == f"mcp-resilience-proxy:{STDIO_TARGET}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == _entrypoint(STDIO_TARGET) == ["tini", "--", *_entrypoint()]
    assert "args" not in container
    assert _config_path() == "/etc/mcp-resilience-proxy/proxy.yaml"


def test_the_default_target_is_the_http_image_unchanged_and_only_stdio_targets_add_tini_and_node() -> None:
    stages = {name: (base, lines) for name, base, lines in _stages()}
    assert _stage(None)[:3] == ("http", "runtime", [])  # docker build . builds the runtime stage as it is
    assert stages["stdio"][0] == "runtime"
    assert stages[STDIO_TARGET][0] == "stdio"
    runtime = "\n".join(stages["runtime"][1])
    assert "tini" not in runtime and "node" not in runtime
    assert any("apt-get install" in line and " tini=" in line for line in stages["stdio"][1])
    assert "COPY --from=node /usr/local/bin/node /usr/local/bin/node" in stages[STDIO_TARGET][1]
    for target in ("stdio", STDIO_TARGET):  # the image's user, as in the runtime stage
        assert [line for line in stages[target][1] if line.startswith("USER ")][-1] == "USER 10001:10001"


def test_stdio_ports_probes_and_service_agree_with_the_config(image_path: Path) -> None:
    config = load_config(_stdio_config_text(), _stdio_pod_env(None))
    container = _stdio_container()
    assert _named_ports(container) == {"mcp": config.listen.port, "admin": config.admin.port}
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert (get["path"], _resolve_port(container, get["port"])) == (path, config.admin.port), probe
    service = _stdio_one("Service")
    deployment = _stdio_one("Deployment")
    selector = {"app.kubernetes.io/name": "mcp-stdio"}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert (port["port"], _resolve_port(container, port["targetPort"])) == (80, config.listen.port)


def test_stdio_security_context_and_resources() -> None:
    assert _stdio_pod_spec()["securityContext"] == _pod_spec()["securityContext"]
    assert _stdio_pod_spec()["automountServiceAccountToken"] is False
    assert _stdio_container()["securityContext"] == _sidecar()["securityContext"]
    assert _stdio_container()["resources"] == {
        "requests": {"cpu": "100m", "memory": "192Mi"},
        "limits": {"cpu": "1", "memory": "768Mi"},
    }


def test_stdio_volumes_config_directory_tmp_and_a_writable_home() -> None:
    spec, container = _stdio_pod_spec(), _stdio_container()
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts == {
        "config": {"name": "config", "mountPath": posixpath.dirname(_config_path()), "readOnly": True},
        "tmp": {"name": "tmp", "mountPath": "/tmp"},
        "home": {"name": "home", "mountPath": _image_env(STDIO_TARGET)["HOME"]},
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"] == {"name": "config", "configMap": {"name": _stdio_one("ConfigMap")["metadata"]["name"]}}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}
    assert volumes["home"] == {"name": "home", "emptyDir": {"sizeLimit": "256Mi"}}
    assert list(_stdio_one("ConfigMap")["data"]) == [posixpath.basename(_config_path())]


def test_stdio_grace_period_outlasts_pre_stop_drain_and_the_childs_stop(image_path: Path) -> None:
    config = load_config(_stdio_config_text(), _stdio_pod_env(None))
    (upstream,) = config.upstreams
    grace = _stdio_pod_spec()["terminationGracePeriodSeconds"]
    pre_stop = _stdio_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert (grace, pre_stop, config.drain_timeout, upstream.child.stop_grace) == (45, 5, 20.0, 2.0)
    assert grace > pre_stop + config.drain_timeout + 2 * upstream.child.stop_grace
