"""The Helm chart (deploy/helm/sentiment-stream): `helm lint --strict` and assertions on `helm template`'s objects.

helm comes from `ops/helm.sh` (`make test` and `.ci/run` install it first). Without it these tests fail, not
skip: a chart nobody renders is a chart nobody checked.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.settings import Settings
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "sentiment-stream"
GPU = CHART / "values-gpu.yaml"
SECRET_NAME = re.compile(r"(?i)(_URL|PASSWORD|SECRET|TOKEN)$")


def _tool(name: str) -> str:
    local = ROOT / ".stack" / "bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `ops/helm.sh` (or `make helm`); `make test` and .ci/run do it first")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([_tool("helm"), *args], capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}"
    return proc


def render(*args: str) -> list[dict[str, Any]]:
    out = helm("template", "rel", str(CHART), "--namespace", "ns", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(objs: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind
             and o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"{len(found)} {kind} objects for {component}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return spec["template"]["spec"]


def containers(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for o in objs if o["kind"] in {"Deployment", "Job", "CronJob"} for c in pod_spec(o)["containers"]]


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("values", [[], ["-f", str(GPU)]], ids=["cpu", "gpu"])
def test_lint_strict(values: list[str]) -> None:
    proc = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", [[], ["-f", str(GPU)]], ids=["cpu", "gpu"])
def test_objects_decode_strictly_into_the_kubernetes_api(values: list[str]) -> None:
    """deploy/helm/kubecheck: an unknown or misplaced field in a built-in object fails (lint checks none)."""
    manifest = helm("template", "rel", str(CHART), *values).stdout
    proc = subprocess.run([_tool("kubecheck")], input=manifest, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "7 objects checked, 0 failed" in proc.stderr
    broken = subprocess.run([_tool("kubecheck")], input=manifest.replace("periodSeconds:", "periodSecond:"),
                            capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1 and 'unknown field "periodSecond"' in broken.stdout


def test_every_component_is_rendered() -> None:
    objs = render()
    kinds = {(o["kind"], o["metadata"]["labels"]["app.kubernetes.io/component"]) for o in objs}
    assert kinds == {("Deployment", "worker"), ("ScaledObject", "worker"), ("PodDisruptionBudget", "worker"),
                     ("Deployment", "dashboard"), ("Service", "dashboard"), ("Job", "init"),
                     ("CronJob", "refresh"), ("PersistentVolumeClaim", "models")}
    init = one(objs, "Job", "init")
    assert init["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"  # topics before workers
    assert pod_spec(init)["containers"][0]["args"] == ["init"]
    refresh = pod_spec(one(objs, "CronJob", "refresh"))["containers"][0]
    assert refresh["args"] == ["refresh", "/app/configs/refresh.yaml"]
    assert pod_spec(one(objs, "Deployment", "worker"))["containers"][0]["args"] == ["worker"]
    for c in containers(objs):
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_scaled_object_scales_workers_on_the_groups_lag() -> None:
    objs = render("--set", "kafka.partitions=12", "--set", "kafka.bootstrapServers=b1:9092\\,b2:9092")
    so = one(objs, "ScaledObject", "worker")
    worker = one(objs, "Deployment", "worker")
    wenv = env(pod_spec(worker)["containers"][0])
    assert so["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert "replicas" not in worker["spec"]  # KEDA's HPA owns the count
    assert so["spec"]["maxReplicaCount"] == 12 and so["spec"]["minReplicaCount"] == 1
    [trigger] = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == wenv["SENTIMENT_KAFKA__BOOTSTRAP_SERVERS"] == "b1:9092,b2:9092"
    assert meta["consumerGroup"] == wenv["SENTIMENT_WORKER__APP_ID"] == "sentiment-worker"
    assert meta["topic"] == wenv["SENTIMENT_KAFKA__REVIEWS_TOPIC"] == "reviews"
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0 and isinstance(meta["lagThreshold"], str)
    # kubecheck knows no KEDA types: the field names KEDA 2.x documents (keda.sh/docs/2.22/scalers/apache-kafka)
    assert set(meta) <= {"bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
                         "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "version"}
    assert all(isinstance(v, str) for v in meta.values())  # trigger metadata is a map of strings
    assert set(so["spec"]) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                               "cooldownPeriod", "advanced", "triggers"}
    # the topic `sentiment init` creates has as many partitions as workers can be scaled to
    assert env(pod_spec(one(objs, "Job", "init"))["containers"][0])["SENTIMENT_KAFKA__PARTITIONS"] == "12"


def test_more_workers_than_partitions_is_refused() -> None:
    proc = helm("template", "rel", str(CHART), "--set", "kafka.partitions=4", "--set",
                "worker.autoscaling.maxReplicas=5", check=False)
    assert proc.returncode != 0 and "maxReplicas (5) > kafka.partitions (4)" in proc.stderr


def test_without_keda_the_deployment_has_its_replicas() -> None:
    objs = render("--set", "worker.autoscaling.enabled=false", "--set", "worker.replicas=3")
    assert not [o for o in objs if o["kind"] == "ScaledObject"]
    assert one(objs, "Deployment", "worker")["spec"]["replicas"] == 3


def test_gpu_values_request_gpus_on_gpu_nodes() -> None:
    cpu, gpu = render(), render("-f", str(GPU))
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(cpu)
    for kind, component in [("Deployment", "worker"), ("CronJob", "refresh")]:
        spec = pod_spec(one(gpu, kind, component))
        c = spec["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert c["image"].endswith("-cuda")
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    wenv = env(pod_spec(one(gpu, "Deployment", "worker"))["containers"][0])
    assert wenv["SENTIMENT_MODEL__DEVICE"] == "cuda"
    dash = pod_spec(one(gpu, "Deployment", "dashboard"))
    assert "nodeSelector" not in dash and "nvidia.com/gpu" not in str(dash)


def test_worker_probes_hit_the_metrics_port_on_all_interfaces() -> None:
    c = pod_spec(one(render(), "Deployment", "worker"))["containers"][0]
    wenv = env(c)
    [port] = c["ports"]
    assert port["name"] == "metrics" and port["containerPort"] == int(wenv["SENTIMENT_WORKER__METRICS_PORT"])
    assert wenv["SENTIMENT_WORKER__METRICS_ADDRESS"] == "0.0.0.0"  # a kubelet probe cannot reach 127.0.0.1
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe


def test_a_worker_with_the_charts_metrics_address_answers_off_loopback(topics: Settings, worker_factory) -> None:
    """The setting the probes rely on, end to end: a real worker told 0.0.0.0 serves /metrics on the machine's
    non-loopback address (where a kubelet's probe comes from); the default stays on 127.0.0.1."""
    assert Settings().worker.metrics_address == "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # no packet is sent: picks the outbound address
        udp.connect(("192.0.2.1", 9))
        host = udp.getsockname()[0]
    if host.startswith("127."):
        pytest.fail("this machine has no non-loopback IPv4 address to test the listener on")
    settings = topics.model_copy(update={"worker": topics.worker.model_copy(update={"metrics_address": "0.0.0.0"})})
    worker = worker_factory(settings)
    url = f"http://{host}:{settings.worker.metrics_port}/metrics"

    def answers() -> bool:
        try:
            return "sentiment_events_consumed_total" in urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return False

    wait_until(answers, 180, f"the worker's metrics on {url}", worker.log)


def test_secrets_only_by_reference() -> None:
    objs = render("-f", str(GPU))
    assert not [o for o in objs if o["kind"] in {"Secret", "ConfigMap"}]
    text = yaml.safe_dump_all(objs)
    assert not re.search(r"://[^/\s@]*:[^/\s@]+@", text), "credentials inside a URL"
    seen = set()
    for c in containers(objs):
        for e in c["env"]:
            if SECRET_NAME.search(e["name"]):
                seen.add(e["name"])
                assert "value" not in e, f"{c['name']}: {e['name']} has a literal value"
                assert e["valueFrom"]["secretKeyRef"]["name"] == "sentiment-stream"
    assert {"SENTIMENT_POSTGRES__URL", "SENTIMENT_REDIS__URL", "SENTIMENT_POSTGRES__WORKER_PASSWORD"} <= seen
    # each job gets only the credentials it logs in with: the operator's URL goes to init and refresh alone
    url_key = {c["name"]: env(c)["SENTIMENT_POSTGRES__URL"]["secretKeyRef"]["key"] for c in containers(objs)}
    assert url_key == {"worker": "postgres-url", "dashboard": "postgres-url", "init": "postgres-operator-url",
                       "refresh": "postgres-operator-url"}
    wenv = env(pod_spec(one(objs, "Deployment", "worker"))["containers"][0])
    assert not {"SENTIMENT_POSTGRES__PASSWORD", "SENTIMENT_POSTGRES__READER_PASSWORD"} & set(wenv)


def test_a_secret_as_plain_env_is_refused() -> None:
    proc = helm("template", "rel", str(CHART), "--set",
                "env.SENTIMENT_POSTGRES__URL=postgresql://u:p@db/sentiment", check=False)
    assert proc.returncode != 0 and "env.SENTIMENT_POSTGRES__URL looks like a secret" in proc.stderr


def test_new_settings_need_no_template_change() -> None:
    objs = render("--set", "secretEnv.SENTIMENT_KAFKA__SASL_PASSWORD=kafka-password",
                  "--set", "worker.secretEnv.SENTIMENT_X__TOKEN.name=other", "--set",
                  "worker.secretEnv.SENTIMENT_X__TOKEN.key=tok", "--set", "worker.env.SENTIMENT_WORKER__BATCH_MAX=128")
    wenv = env(pod_spec(one(objs, "Deployment", "worker"))["containers"][0])
    assert wenv["SENTIMENT_KAFKA__SASL_PASSWORD"] == {"secretKeyRef": {"name": "sentiment-stream",
                                                                        "key": "kafka-password"}}
    assert wenv["SENTIMENT_X__TOKEN"] == {"secretKeyRef": {"name": "other", "key": "tok"}}
    assert wenv["SENTIMENT_WORKER__BATCH_MAX"] == "128"
    denv = env(pod_spec(one(objs, "Deployment", "dashboard"))["containers"][0])
    assert "SENTIMENT_KAFKA__SASL_PASSWORD" in denv and "SENTIMENT_X__TOKEN" not in denv


def test_rendered_settings_are_real_settings() -> None:
    """Settings ignore unknown variables: a misspelt SENTIMENT_* name in the chart would do nothing, silently."""
    sections = Settings.model_fields
    for values in ([], ["-f", str(GPU)]):
        for c in containers(render(*values)):
            for name in env(c):
                if not name.startswith("SENTIMENT_") or name == "SENTIMENT_SHARED_DATA":  # read by training.paths
                    continue
                section, _, field = name.removeprefix("SENTIMENT_").lower().partition("__")
                assert section in sections, f"{c['name']}: {name} names no settings section"
                if field:
                    model = sections[section].annotation
                    assert field in model.model_fields, f"{c['name']}: {name} names no setting of {section}"


def test_pdb_selects_exactly_the_worker_pods() -> None:
    objs = render()
    pdb = one(objs, "PodDisruptionBudget", "worker")
    selector = pdb["spec"]["selector"]["matchLabels"]
    for kind, component in [("Deployment", "worker"), ("Deployment", "dashboard"), ("Job", "init"),
                            ("CronJob", "refresh")]:
        obj = one(objs, kind, component)
        tmpl = obj["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" else obj["spec"]["template"]
        labels = tmpl["metadata"]["labels"]
        assert (selector.items() <= labels.items()) == (component == "worker"), component
    assert pdb["spec"]["maxUnavailable"] == 1  # a single worker can still be drained
