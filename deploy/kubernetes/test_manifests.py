"""Safety settings that every rendered Kubernetes variant must keep (run by validate.sh).

Reads the rendered manifests from $RTDETR_K8S_RENDERED (default target/k8s-validate/rendered,
one FILE.yaml per variant: base, each overlay, each overlay with the components), as written by
deploy/kubernetes/validate.sh, and checks: probes on /health, preStop + a grace period long
enough to drain, pod and container securityContext, whole-CPU requests == limits with the
inference threads derived from the CPU limit, API keys from a Secret (never a ConfigMap, never a
committed key), the Ingress's limits matching the server's, the HPA on CPU + rtdetr_queue_depth,
the PDB, the NetworkPolicy's egress ports, and the Dockerfile's basics.

Run: pytest deploy/kubernetes/test_manifests.py   (after validate.sh has rendered)
"""
import os
import pathlib
import re
import subprocess

import pytest
import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RENDERED = pathlib.Path(os.environ.get("RTDETR_K8S_RENDERED", ROOT / "target/k8s-validate/rendered"))

# The server's flags (issue 3: `rtdetr serve`) that the manifests may pass.
SERVER_FLAGS = {"--model", "--host", "--port", "--api-key", "--served-model-name", "--max-batch-size",
                "--max-batch-delay-ms", "--max-queue", "--max-image-pixels", "--max-body-bytes",
                "--allow-private-urls", "--request-timeout-secs"}
QUEUE_METRIC = "rtdetr_queue_depth"
SECRET_NAME, SECRET_KEY = "rtdetr-api-keys", "api-keys"
ALLOWED_EGRESS = {("UDP", 53), ("TCP", 53), ("TCP", 80), ("TCP", 443)}


def variants():
    files = sorted(RENDERED.glob("*.yaml"))
    if not files:
        pytest.exit(f"no rendered manifests in {RENDERED}: run deploy/kubernetes/validate.sh", returncode=2)
    return files


@pytest.fixture(params=variants(), ids=lambda p: p.stem)
def objs(request):
    with open(request.param) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(objs, kind):
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def pod_spec(objs):
    return one(objs, "Deployment")["spec"]["template"]["spec"]


def server(objs):
    cs = pod_spec(objs)["containers"]
    assert [c["name"] for c in cs] == ["rtdetr"], "one container, named rtdetr"
    return cs[0]


def all_containers(objs):
    spec = pod_spec(objs)
    return spec.get("initContainers", []) + spec["containers"]


def config(objs):
    """The data of the ConfigMap that the server container takes its environment from."""
    names = [e["configMapRef"]["name"] for e in server(objs).get("envFrom", []) if "configMapRef" in e]
    assert len(names) == 1, "the server takes its settings from one ConfigMap"
    cms = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"] == names[0]]
    assert cms, f"ConfigMap {names[0]} referenced by the Deployment is not in the output"
    return cms[0].get("data", {})


def arg_values(container):
    out = {}
    for a in container.get("args", []):
        if a.startswith("--"):
            k, _, v = a.partition("=")
            out[k] = v
    return out


def resolve(value, cfg):
    return re.sub(r"\$\((\w+)\)", lambda m: cfg[m.group(1)], value)


def preStop_seconds(c):
    assert "preStop" in c.get("lifecycle", {}), f"{c['name']}: lifecycle.preStop missing"
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] in ("sleep", "/bin/sleep") and len(cmd) == 2, f"preStop must be a plain sleep, got {cmd}"
    return int(cmd[1])


def nginx_size(s):
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", s)
    assert m, f"bad nginx size {s!r}"
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


def pod_labels(objs):
    return one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]


def selects(match_labels, labels):
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


# ---------------------------------------------------------------- probes and draining


def test_probes_on_health(objs):
    c = server(objs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert probe in c, f"{probe} missing"
        get = c[probe]["httpGet"]
        assert get["path"] == "/health", f"{probe} must use /health"
        assert get["port"] in ports or get["port"] in ports.values()
    # Startup may take minutes (model load + warm-up) without liveness killing the pod.
    s = c["startupProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= 120


def test_prestop_and_grace_period_cover_drain(objs):
    spec, c = pod_spec(objs), server(objs)
    pre = preStop_seconds(c)
    assert pre >= 5, "preStop must give endpoints/ingress time to drop the pod"
    grace = spec["terminationGracePeriodSeconds"]
    ann = one(objs, "Ingress")["metadata"]["annotations"]
    longest_request = int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert grace >= pre + longest_request + 10, (
        f"terminationGracePeriodSeconds {grace} < preStop {pre} + longest request {longest_request} + 10 s")
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= grace - pre, (
        "liveness could kill a draining pod before its grace period ends")


def test_rollout_never_reduces_capacity(objs):
    d = one(objs, "Deployment")
    assert "replicas" not in d["spec"], "the HPA owns the replica count: no spec.replicas"
    ru = d["spec"]["strategy"]["rollingUpdate"]
    assert d["spec"]["strategy"]["type"] == "RollingUpdate"
    assert str(ru["maxUnavailable"]) in ("0", "0%")


# ---------------------------------------------------------------- security


def test_pod_security_context(objs):
    spec = pod_spec(objs)
    sc = spec["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc.get("runAsUser", 0) != 0 and sc.get("runAsGroup", 0) != 0
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False
    assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True


@pytest.mark.parametrize("field", ["allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"])
def test_container_security_context(objs, field):
    for c in all_containers(objs):
        sc = c["securityContext"]
        if field == "allowPrivilegeEscalation":
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc.get("privileged") is not True, c["name"]
        elif field == "readOnlyRootFilesystem":
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
        else:
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), c["name"]
        assert sc.get("runAsNonRoot", True) is True


def test_writable_paths_are_volumes(objs):
    spec = pod_spec(objs)
    vols = {v["name"]: v for v in spec["volumes"]}
    for c in all_containers(objs):
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert "/tmp" in mounts and "emptyDir" in vols[mounts["/tmp"]["name"]], f"{c['name']}: /tmp emptyDir"
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        hf = env.get("HF_HOME")
        assert hf, f"{c['name']}: HF_HOME must point into the cache volume"
        cache = [m for p, m in mounts.items() if hf == p or hf.startswith(p.rstrip("/") + "/")]
        assert cache, f"{c['name']}: HF_HOME {hf} is not on a volume"
        vol = vols[cache[0]["name"]]
        assert "persistentVolumeClaim" in vol or "ephemeral" in vol, "model cache must be a PVC"
        if "persistentVolumeClaim" in vol:
            pvcs = {p["metadata"]["name"] for p in by_kind(objs, "PersistentVolumeClaim")}
            assert vol["persistentVolumeClaim"]["claimName"] in pvcs
    # The server only reads the cache; the init container fills it.
    srv = {m["mountPath"]: m for m in server(objs)["volumeMounts"]}
    assert srv["/cache"].get("readOnly") is True


def test_api_keys_from_secret_only(objs):
    env = {e["name"]: e for e in server(objs).get("env", [])}
    keys = env["RTDETR_API_KEYS"]
    assert "value" not in keys, "API keys must not be literal"
    ref = keys["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (SECRET_NAME, SECRET_KEY)
    assert ref.get("optional") is not True, "a missing Secret must keep the pod from starting (fail closed)"
    assert not any(a.startswith("--api-key") for a in server(objs).get("args", [])), "no keys on the command line"
    # No key material committed: no Secret with data in the rendered output.
    for s in by_kind(objs, "Secret"):
        assert not s.get("data") and not s.get("stringData"), f"Secret {s['metadata']['name']} carries data"


def test_no_keys_in_configmaps(objs):
    for cm in by_kind(objs, "ConfigMap"):
        for k, v in (cm.get("data") or {}).items():
            assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", k, re.I), f"{cm['metadata']['name']}: {k}"
            assert not re.search(r"(?i)bearer|sk-[A-Za-z0-9]{8,}", v), f"{cm['metadata']['name']}: {k}"


def test_secret_example_is_a_placeholder():
    ex = yaml.safe_load((HERE / "base/secret.example.yaml").read_text())
    assert ex["metadata"]["name"] == SECRET_NAME
    assert "not-a-real-key" in ex["stringData"][SECRET_KEY]
    kust = yaml.safe_load((HERE / "base/kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kust.get("resources", [])


# ---------------------------------------------------------------- sizing


def test_requests_equal_limits_whole_cpus(objs):
    for c in all_containers(objs):
        r = c["resources"]
        for res in ("cpu", "memory"):
            assert str(r["requests"][res]) == str(r["limits"][res]), f"{c['name']}: {res} requests != limits"
        assert re.fullmatch(r"[1-9]\d*", str(r["limits"]["cpu"])), f"{c['name']}: whole CPUs"


def test_inference_threads_follow_cpu_limit(objs):
    for c in all_containers(objs):
        env = {e["name"]: e for e in c.get("env", [])}
        ref = env["RAYON_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu" and str(ref.get("divisor", "1")) == "1"
        assert ref["containerName"] == c["name"]


# ---------------------------------------------------------------- server flags and limits


def test_server_args(objs):
    c = server(objs)
    cfg = config(objs)
    assert c["args"][0] == "serve"
    args = arg_values(c)
    unknown = set(args) - SERVER_FLAGS
    assert not unknown, f"flags that `rtdetr serve` does not have: {unknown}"
    for k, v in args.items():
        for var in re.findall(r"\$\((\w+)\)", v):
            assert var in cfg, f"{k} uses $({var}), not in the ConfigMap"
    assert args["--host"] == "0.0.0.0"
    assert int(args["--port"]) == c["ports"][0]["containerPort"]
    for flag in ("--max-batch-size", "--max-queue", "--max-image-pixels", "--max-body-bytes"):
        assert int(resolve(args[flag], cfg)) > 0, flag


def test_ingress_matches_server_limits(objs):
    ing = one(objs, "Ingress")
    ann = ing["metadata"]["annotations"]
    cfg = config(objs)
    body = int(resolve(arg_values(server(objs))["--max-body-bytes"], cfg))
    assert nginx_size(ann["nginx.ingress.kubernetes.io/proxy-body-size"]) == body
    for t in ("proxy-read-timeout", "proxy-send-timeout", "proxy-connect-timeout"):
        assert int(ann[f"nginx.ingress.kubernetes.io/{t}"]) > 0
    deadline = arg_values(server(objs)).get("--request-timeout-secs")
    if deadline is not None:
        assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > int(resolve(deadline, cfg)), (
            "nginx must wait longer than the server's own request deadline")
    nxt = ann["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    assert "error" in nxt and "http_503" in nxt, "retry on a refused connection / draining replica"
    assert "http_429" not in nxt, "back-pressure (429) must reach the client"
    assert "http_504" not in nxt, "a passed deadline (504) already took a replica's time: no retry"
    assert "http_500" not in nxt and "http_502" not in nxt, "only retry where no work was done"
    assert ing["spec"].get("tls"), "API keys travel in headers: TLS required"
    svc = one(objs, "Service")
    for rule in ing["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            assert p["path"].startswith("/v1"), f"only the API is public, not {p['path']}"
            assert p["backend"]["service"]["name"] == svc["metadata"]["name"]


def test_service_selects_pods(objs):
    svc = one(objs, "Service")
    assert selects(svc["spec"]["selector"], pod_labels(objs))
    names = {p["name"] for p in server(objs)["ports"]}
    assert all(p["targetPort"] in names for p in svc["spec"]["ports"])


# ---------------------------------------------------------------- scaling and disruption


def test_hpa_cpu_and_queue_depth(objs):
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    tgt = hpa["spec"]["scaleTargetRef"]
    assert (tgt["kind"], tgt["name"]) == ("Deployment", one(objs, "Deployment")["metadata"]["name"])
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Pods"]["pods"]["metric"]["name"] == QUEUE_METRIC
    assert kinds["Pods"]["pods"]["target"]["type"] == "AverageValue"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_adapter_rule_exposes_the_hpa_metric():
    rules = yaml.safe_load((HERE / "prometheus-adapter/rules.yaml").read_text())["rules"]["custom"]
    exposed = {r["name"]["as"] for r in rules}
    assert QUEUE_METRIC in exposed
    for r in rules:
        assert QUEUE_METRIC in r["seriesQuery"] and 'pod!=""' in r["seriesQuery"]
        assert r["resources"]["overrides"]["pod"]["resource"] == "pod"


def test_pdb_and_anti_affinity(objs):
    pdb = one(objs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(objs))
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]
    terms = pod_spec(objs)["affinity"]["podAntiAffinity"]
    terms = [t["podAffinityTerm"] for t in terms.get("preferredDuringSchedulingIgnoredDuringExecution", [])] + \
        terms.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    assert any(t["topologyKey"] == "kubernetes.io/hostname" and selects(t["labelSelector"]["matchLabels"],
                                                                       pod_labels(objs)) for t in terms)


# ---------------------------------------------------------------- network


def test_network_policy(objs):
    np_ = one(objs, "NetworkPolicy")
    assert selects(np_["spec"]["podSelector"]["matchLabels"], pod_labels(objs))
    assert set(np_["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = set()
    for rule in np_["spec"]["egress"]:
        assert rule.get("ports"), "every egress rule must be limited to ports"
        for p in rule["ports"]:
            ports.add((p.get("protocol", "TCP"), p["port"]))
    assert ports == ALLOWED_EGRESS, f"egress ports {sorted(ports)}"
    sources = [f.get("namespaceSelector", {}).get("matchLabels", {}) for r in np_["spec"]["ingress"]
               for f in r["from"]]
    assert {"kubernetes.io/metadata.name": "ingress-nginx"} in sources
    for r in np_["spec"]["ingress"]:
        assert r.get("ports"), "ingress limited to the server port"


def test_servicemonitor_matches_service(objs):
    sms = by_kind(objs, "ServiceMonitor")
    if not sms:
        pytest.skip("variant without the servicemonitor component")
    sm, svc = sms[0], one(objs, "Service")
    assert sm["metadata"].get("namespace") == svc["metadata"]["namespace"]
    assert selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in port_names and ep["path"] == "/metrics"


# ---------------------------------------------------------------- image


def test_dockerfile_basics():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2 and stages[0].startswith("rust:") and "slim" in stages[-1]
    assert "target-cpu=native" not in re.sub(r"#.*", "", text), "the image must run on any x86-64 node"
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0"
    assert re.search(r"^HEALTHCHECK .*\n?.*?/health", text, re.M)
    copies = re.findall(r"^COPY\s+(?!--from)(.*)$", text, re.M)
    runtime = text[text.rindex("\nFROM "):]
    assert re.findall(r"^COPY\s+(?!--from)(\S+)", runtime, re.M) == ["models/shapes-demo"], copies
    assert (ROOT / ".dockerignore").exists()


def _help_flags(exe, sub):
    r = subprocess.run([str(exe), sub, "--help"], capture_output=True, text=True, timeout=30)
    return set(re.findall(r"--[a-z][a-z0-9-]*", r.stdout)) if r.returncode == 0 else None


@pytest.mark.parametrize("container", ["fetch-model", "rtdetr"])
def test_flags_exist_in_the_binary(container):
    """Every flag the manifests pass is one the built binary accepts (skipped until it is built;
    for the server, until `rtdetr serve` exists)."""
    exe = ROOT / "target/release/rtdetr"
    if not exe.exists():
        pytest.skip("target/release/rtdetr not built")
    used = {}
    for f in variants():
        for o in yaml.safe_load_all(f.read_text()):
            if o and o["kind"] == "Deployment":
                spec = o["spec"]["template"]["spec"]
                for c in spec.get("initContainers", []) + spec["containers"]:
                    if c["name"] == container:
                        used.setdefault(c["args"][0], set()).update(arg_values(c))
    assert used, f"no container {container}"
    for sub, flags in used.items():
        accepted = _help_flags(exe, sub)
        if accepted is None:
            pytest.skip(f"this rtdetr binary has no `{sub}` subcommand yet")
        assert flags <= accepted, f"flags not accepted by `rtdetr {sub}`: {flags - accepted}"
