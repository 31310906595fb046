"""KubeRay manifests and Prometheus configs: valid for KubeRay's CRDs, Ray Serve and the platform, and consistent."""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
KUBERAY = ROOT / "cluster" / "kuberay"
SCRAPE = ROOT / "cluster" / "prometheus" / "scrape.yaml"
#: KubeRay's CRDs live in the shared checkout beside the repository (not copied here: licence, size).
CRD_DIR = ROOT.parent / "shared" / "kuberay-crds"
IMAGE_PYTHON = "/app/.venv/bin/python"
IMAGE_CLI = "/app/.venv/bin/x0tta6bl4"  # the console script scripts/setup.sh installs into the image's venv

#: manifest file -> the CRD (plural) it is an instance of.
CRDS = {"raycluster.yaml": "rayclusters", "rayservice.yaml": "rayservices", "rayjob-train.yaml": "rayjobs"}
METRICS_PORTS = {"metrics": 8080, "dash-metrics": 44227, "as-metrics": 44217}
#: Importing Ray Serve's schema warns about Ray's own pydantic usage.
ray_serve_warnings = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray\\..*")


@functools.cache
def _parsed(path: Path) -> list[Any]:
    return [d for d in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader) if d is not None]


def _docs(name: str) -> list[dict[str, Any]]:
    """The documents of ``cluster/kuberay/<name>`` (a fresh copy: tests may mutate it)."""
    return copy.deepcopy(_parsed(KUBERAY / name))


def _doc(name: str, kind: str | None = None) -> dict[str, Any]:
    docs = [d for d in _docs(name) if kind is None or d["kind"] == kind]
    assert len(docs) == 1, f"{name}: expected one {kind or 'document'}, found {len(docs)}"
    return docs[0]


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as `kubectl apply --validate=strict` refuses them.

    A CRD's structural schema only prunes unknown fields, so a misspelt key would pass silently.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd(plural: str) -> tuple[str, str, dict[str, Any]]:
    """apiVersion, kind and strict v1 schema of KubeRay's CRD ``ray.io_<plural>.yaml``."""
    path = CRD_DIR / f"ray.io_{plural}.yaml"
    if not path.is_file():
        pytest.skip(
            f"KubeRay CRD {path} is missing: the schema checks need the shared checkout's kuberay-crds"
        )
    crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return (
        f"{crd['spec']['group']}/v1",
        crd["spec"]["names"]["kind"],
        _strict(v1["schema"]["openAPIV3Schema"]),
    )


def _schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    """Every violation as ``path: message`` (OpenAPI v3.0 schemas follow JSON Schema draft 4)."""
    errors = jsonschema.Draft4Validator(schema).iter_errors(instance)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def _crd_errors(name: str, doc: dict[str, Any]) -> list[str]:
    api_version, kind, schema = _crd(CRDS[name])
    assert (doc["apiVersion"], doc["kind"]) == (api_version, kind)
    return _schema_errors(schema, doc)


def _cluster_specs() -> dict[str, dict[str, Any]]:
    """Each manifest's RayCluster spec."""
    return {
        "raycluster.yaml": _doc("raycluster.yaml")["spec"],
        "rayservice.yaml": _doc("rayservice.yaml", "RayService")["spec"]["rayClusterConfig"],
        "rayjob-train.yaml": _doc("rayjob-train.yaml")["spec"]["rayClusterSpec"],
    }


def _groups(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, group spec) for the head ("head") and every worker group."""
    yield "head", spec["headGroupSpec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _mount_path(pod: dict[str, Any], container: dict[str, Any], volume_kind: str, name: str) -> list[str]:
    """Mount paths in ``container`` of the pod's volumes of ``volume_kind`` named ``name`` (PVC, Secret)."""
    key = {"secret": "secretName", "persistentVolumeClaim": "claimName"}[volume_kind]
    volumes = {v["name"] for v in pod.get("volumes", []) if v.get(volume_kind, {}).get(key) == name}
    return [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in volumes]


def _serve_config() -> dict[str, Any]:
    text = _doc("rayservice.yaml", "RayService")["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 is a YAML string"
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def _app(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = config["applications"]
    return dict(app)


def _deployment_names() -> set[str]:
    """``name=`` of every ``@serve.deployment(...)`` in the serve package (read, not imported: no torch)."""
    names = set()
    for path in (ROOT / "platform" / "x0tta6bl4" / "serve").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "serve.deployment":
                names |= {
                    k.value.value
                    for k in node.keywords
                    if k.arg == "name" and isinstance(k.value, ast.Constant)
                }
    return names


def _walk(obj: Any) -> Iterator[Any]:
    yield obj
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    for child in children:
        yield from _walk(child)


# ---------------------------------------------------------------------------- the CRDs


@pytest.mark.parametrize("name", sorted(CRDS))
def test_manifest_is_valid_against_its_kuberay_crd(name):
    assert _crd_errors(name, _doc(name, _crd(CRDS[name])[1])) == []


def test_rayservice_cluster_config_is_a_valid_raycluster_spec():
    schema = _crd("rayclusters")[2]["properties"]["spec"]
    assert _schema_errors(schema, _doc("rayservice.yaml", "RayService")["spec"]["rayClusterConfig"]) == []


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value

    return mutate


def _drop(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        for key in path[:-1]:
            doc = doc[key]
        del doc[path[-1]]

    return mutate


@pytest.mark.parametrize(
    ("name", "mutate", "expected"),
    [
        (
            "raycluster.yaml",
            _set(["spec", "workerGroupSpecs", 0, "replicas"], "two"),
            "is not of type 'integer'",
        ),
        ("raycluster.yaml", _set(["spec", "authOptions", "mode"], "password"), "is not one of"),
        (
            "raycluster.yaml",
            _set(["spec", "workerGroupSpecs", 0, "rayStartParam"], {}),
            "'rayStartParam' was unexpected",
        ),
        (
            "raycluster.yaml",
            _drop(["spec", "headGroupSpec", "template"]),
            "'template' is a required property",
        ),
        ("rayservice.yaml", _set(["spec", "serveConfigV2"], {"applications": []}), "is not of type 'string'"),
        ("rayjob-train.yaml", _set(["spec", "shutdownAfterJobFinishes"], "yes"), "is not of type 'boolean'"),
    ],
    ids=[
        "wrong-type",
        "bad-enum",
        "unknown-field",
        "missing-required",
        "serve-config-not-a-string",
        "job-bool",
    ],
)
def test_the_crd_check_refuses_a_broken_manifest(name, mutate, expected):
    doc = _doc(name, _crd(CRDS[name])[1])  # a fresh copy
    mutate(doc)
    errors = _crd_errors(name, doc)
    assert any(expected in e for e in errors), errors


def test_every_cluster_pins_ray_and_uses_token_auth_from_a_secret():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("ray[")]
    ray_version = pin.split("==")[1]
    for name, spec in _cluster_specs().items():
        assert spec["rayVersion"] == ray_version == "2.55.1", name
        assert spec["authOptions"] == {"mode": "token", "secretName": "x0tta6bl4-ray-token"}, name


# ---------------------------------------------------------------------------- the Serve config


@ray_serve_warnings
def test_serve_config_v2_is_a_valid_ray_serve_deploy_config():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(_serve_config())
    assert [a.name for a in schema.applications] == ["x0tta6bl4"]


def test_serve_app_args_are_a_valid_platform_serve_config():
    from x0tta6bl4.serve.config import ServeConfig

    config = ServeConfig.model_validate(_app(_serve_config())["args"])
    assert config.http.front_token_file is not None


def test_serve_config_v2_is_the_repos_serve_config_adapted_for_the_cluster():
    """Only the adaptations differ: bind address, paths on the volume, the front's token, bootstrap."""
    local = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    cluster = _serve_config()
    assert cluster["http_options"] == {**local["http_options"], "host": "0.0.0.0"}
    assert cluster["proxy_location"] == local["proxy_location"]
    local_app, cluster_app = _app(local), _app(cluster)
    for key in ("name", "route_prefix", "import_path"):
        assert cluster_app[key] == local_app[key]
    expected = copy.deepcopy(local_app["args"])
    expected["anomaly"] |= {"registry": "/data/registry", "bootstrap": True}
    expected["rag"]["retriever"]["data_dir"] = "/data/rag"
    expected["http"] |= {
        "host": "0.0.0.0",
        "port": 8000,
        "front_token_file": "/run/x0tta6bl4/security/front.token",
    }
    assert cluster_app["args"] == expected


def test_detector_and_retriever_autoscale_as_deployments_of_the_app():
    overrides = {d["name"]: d for d in _app(_serve_config())["deployments"]}
    assert set(overrides) == {"AnomalyDetector", "RunbookRetriever"}
    assert set(overrides) <= _deployment_names()
    for d in overrides.values():
        assert d["num_replicas"] == "auto"
        assert 1 <= d["autoscaling_config"]["min_replicas"] < d["autoscaling_config"]["max_replicas"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: _app(c)["deployments"][0].update(num_replicas=2), "num_replicas is not allowed"),
        (lambda c: c["http_options"].update(port="http"), "http_options.port"),
    ],
    ids=["replicas-and-autoscaling", "port-not-int"],
)
@ray_serve_warnings
def test_ray_serve_schema_refuses_a_broken_serve_config(mutate, expected):
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    config = _serve_config()
    config["applications"] = [_app(config)]
    mutate(config)
    with pytest.raises(ValidationError, match=re.escape(expected)):
        ServeDeploySchema.model_validate(config)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["anomaly", "num_replicas"], 0, "anomaly.num_replicas"),
        (["rag", "replicas"], 2, "rag.replicas"),
        (["http", "score_max_bytes"], "64MiB", "http.score_max_bytes"),
    ],
    ids=["out-of-range", "unknown-key", "wrong-type"],
)
def test_platform_serve_config_refuses_broken_app_args(path, value, expected):
    from pydantic import ValidationError

    from x0tta6bl4.serve.config import ServeConfig

    args = copy.deepcopy(_app(_serve_config())["args"])
    _set(path, value)(args)
    with pytest.raises(ValidationError, match=re.escape(expected)):
        ServeConfig.model_validate(args)


def test_serve_paths_are_on_the_shared_volume_and_the_token_on_its_secret_in_every_serve_pod():
    args = _app(_serve_config())["args"]
    spec = _cluster_specs()["rayservice.yaml"]
    for group, g in _groups(spec):
        pod = g["template"]["spec"]
        ray = pod["containers"][0]
        (data,) = [
            p for p in _mount_path(pod, ray, "persistentVolumeClaim", "x0tta6bl4-data") if p == "/data"
        ]
        for path in (args["anomaly"]["registry"], args["rag"]["retriever"]["data_dir"]):
            assert path.startswith(data + "/"), (group, path)
        assert args["http"]["front_token_file"] in _mount_path(pod, ray, "secret", "x0tta6bl4-front-token"), (
            group
        )
        env = {e["name"]: e.get("value") for e in ray["env"]}
        # build_front and `x0tta6bl4 serve` read the token beside the CA directory.
        assert str(Path(env["X0TTA6BL4_CA_DIR"]).parent / "front.token") == args["http"]["front_token_file"]


# ---------------------------------------------------------------------------- the mTLS front


def _front_sidecar() -> tuple[dict[str, Any], dict[str, Any]]:
    head = _cluster_specs()["rayservice.yaml"]["headGroupSpec"]["template"]
    (front,) = [c for c in head["spec"]["containers"] if c["name"] == "mtls-front"]
    return head, front


def _k8s_expand(arg: str, env: dict[str, str]) -> str:
    """``arg`` as Kubernetes passes it: ``$(VAR)`` of a variable the container defines is replaced."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def test_the_front_sidecar_runs_serve_front_only_against_its_pods_serve_port():
    """The sidecar's command line, parsed by the real `x0tta6bl4` parser: what it listens on and forwards to."""
    from x0tta6bl4.cli import build_parser
    from x0tta6bl4.security.authz import DEFAULT_POLICY_PATH
    from x0tta6bl4.serve.cli import config_from_args, serve_main

    head, front = _front_sidecar()
    assert front["command"] == [IMAGE_CLI]
    (namespace,) = [e for e in front["env"] if e["name"] == "POD_NAMESPACE"]
    assert namespace["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    argv = [_k8s_expand(a, {"POD_NAMESPACE": "mesh"}) for a in front["args"]]
    assert not any("$(" in a for a in argv), argv
    args = build_parser().parse_args(argv)
    assert args.handler is serve_main and args.front_only and not args.no_front
    config = config_from_args(args)

    serve = _serve_config()
    assert (config.http.host, config.http.port) == ("127.0.0.1", serve["http_options"]["port"])
    assert config.http.score_max_bytes == _app(serve)["args"]["http"]["score_max_bytes"]
    ports = {p["name"]: p["containerPort"] for p in front["ports"]}
    assert (config.front.host, config.front.port) == ("0.0.0.0", ports["front"])
    assert config.front.metrics_port == ports["front-metrics"]  # scraped by the PodMonitor and scrape.yaml
    assert config.front.enabled and config.front.policy is None and DEFAULT_POLICY_PATH.is_file()
    svc = "x0tta6bl4-front"
    assert _doc("rayservice.yaml", "Service")["metadata"]["name"] == svc
    assert config.front.dns_names == [
        "localhost",
        svc,
        f"{svc}.mesh",
        f"{svc}.mesh.svc",
        f"{svc}.mesh.svc.cluster.local",
    ]
    ray_env = {e["name"]: e.get("value") for e in head["spec"]["containers"][0]["env"]}
    front_env = {e["name"]: e.get("value") for e in front["env"]}
    assert front_env["X0TTA6BL4_CA_DIR"] == ray_env["X0TTA6BL4_CA_DIR"]
    assert front_env["X0TTA6BL4_LEDGER_DIR"] == ray_env["X0TTA6BL4_LEDGER_DIR"]
    assert {m["mountPath"] for m in front["volumeMounts"]} <= {
        m["mountPath"] for m in head["spec"]["containers"][0]["volumeMounts"]
    }


def test_the_front_service_reaches_the_head_sidecar_only():
    service = _doc("rayservice.yaml", "Service")
    selector = service["spec"]["selector"]
    head, _ = _front_sidecar()
    assert selector.items() <= head["metadata"]["labels"].items()
    for group, g in _groups(_cluster_specs()["rayservice.yaml"]):
        if group != "head":
            assert not selector.items() <= g["template"]["metadata"].get("labels", {}).items(), group
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (8443, "front")


# ---------------------------------------------------------------------------- image, secrets, training


def test_every_container_runs_the_platform_image_built_by_the_dockerfile():
    from x0tta6bl4 import __version__

    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert "WORKDIR /app" in dockerfile and IMAGE_PYTHON.startswith("/app/.venv/")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(IMAGE_CLI).parent == Path(IMAGE_PYTHON).parent and Path(IMAGE_CLI).name in scripts
    for name, spec in _cluster_specs().items():
        for group, g in _groups(spec):
            for c in _containers(g["template"]["spec"]):
                assert c["image"] == f"x0tta6bl4:{__version__}", (name, group, c["name"])


def test_no_key_or_token_is_written_in_a_manifest():
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs = _docs(path.name)
        assert all(d["kind"] != "Secret" for d in docs), path.name
        for node in _walk(docs):
            if isinstance(node, str):
                assert "PRIVATE KEY" not in node and "BEGIN CERTIFICATE" not in node, path.name
            if isinstance(node, dict) and isinstance(node.get("name"), str) and "value" in node:
                assert not re.search(r"TOKEN|SECRET|PASSWORD|KEY", node["name"]), (path.name, node["name"])
    for name, spec in _cluster_specs().items():
        for _, g in _groups(spec):
            for volume in g["template"]["spec"].get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in {"x0tta6bl4-ca", "x0tta6bl4-front-token"}, name
                    assert volume["secret"]["defaultMode"] == 0o400, name


def test_rayjob_entrypoint_is_a_valid_train_command_on_the_shared_volume():
    from x0tta6bl4.federated.config import add_train_arguments, config_from_args

    job = _doc("rayjob-train.yaml")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["x0tta6bl4", "train"]
    parser = argparse.ArgumentParser(exit_on_error=False)  # `x0tta6bl4 train`'s own arguments
    add_train_arguments(parser)
    args = parser.parse_args(argv[2:])
    config = config_from_args(args)
    assert str(config.registry).startswith("/data/") and str(config.runs_dir).startswith("/data/")
    assert "--client-cpus" in argv  # Flower sizes its pool from the cluster's CPUs otherwise
    assert job["shutdownAfterJobFinishes"] is True


# ---------------------------------------------------------------------------- metrics


def _scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(SCRAPE.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def _kept_port_name(job: dict[str, Any]) -> str:
    (rule,) = [
        r
        for r in job["relabel_configs"]
        if r.get("action") == "keep" and r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    ]
    return str(rule["regex"])


def test_scrape_config_has_a_job_per_ray_metrics_port_declared_by_the_manifests():
    jobs = _scrape_jobs()
    assert {name: _kept_port_name(job) for name, job in jobs.items()} == {
        "ray-nodes": "metrics",
        "ray-dashboard": "dash-metrics",
        "ray-autoscaler": "as-metrics",
        "x0tta6bl4-front": "front-metrics",
    }
    for job in jobs.values():
        assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
        for rule in job["relabel_configs"]:
            re.compile(str(rule.get("regex", "(.*)")))
    for name, spec in _cluster_specs().items():
        for group, g in _groups(spec):
            assert g["rayStartParams"]["metrics-export-port"] == str(METRICS_PORTS["metrics"]), (name, group)
            ray = g["template"]["spec"]["containers"][0]
            ports = {p["name"]: p["containerPort"] for p in ray["ports"]}
            assert ports["metrics"] == METRICS_PORTS["metrics"], (name, group)
            assert all(ports[p] == n for p, n in METRICS_PORTS.items() if p in ports), (name, group)


def test_podmonitor_scrapes_the_same_ports_as_the_scrape_config():
    monitor = _doc("podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert monitor["spec"]["selector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    ports = [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
    assert sorted(ports) == sorted(_kept_port_name(job) for job in _scrape_jobs().values())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
def test_scrape_config_passes_promtool(tmp_path):
    # Debian's Prometheus is built without Kubernetes service discovery (kubernetes_sd_configs is an
    # unknown field there): the copy checked here finds its pods in a static list instead, so promtool
    # still checks everything else (relabelling, intervals, the rule files it loads).
    config = yaml.safe_load(SCRAPE.read_text())
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}] if job.pop("kubernetes_sd_configs") else []
    for rules in config.get("rule_files", []):
        shutil.copy(SCRAPE.parent / rules, tmp_path / rules)
    (tmp_path / "scrape.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "scrape.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"SUCCESS: [1-9][0-9]* rules found", done.stdout)  # rules.yaml, through rule_files
