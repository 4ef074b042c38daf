#!/usr/bin/env python3
"""Lints the deployment files (`make lint`); what runs them is `make image-test`.

  docker/Dockerfile  hadolint, every rule (the exceptions are marked in the file).
  deploy/k8s/        kubernetes-validate --strict: every manifest against the Kubernetes
                     schemas (bundled with it, no cluster), unknown fields refused. Then
                     what no schema sees: selectors and labels agree; the Service, the
                     probes name the container's port; readiness is /ready, liveness
                     /health; the ConfigMap, the claim and the mounts line up with
                     GRADCAM_CONFIG and GRADCAM_WEIGHTS; config.toml's keys and the
                     GRADCAM_* names exist; the pod's user is the image's; the grace period
                     covers preStop plus request_timeout_secs; kustomization.yaml lists
                     every manifest.
  deploy/kserve/      every InferenceService (serving.kserve.io/v1beta1) against the schema
                     of the KServe Python SDK's classes, generated from the CRD's OpenAPI
                     (no registry carries the CRD itself): every field known, of its type,
                     the required ones there, unknown fields refused. The predictor's pod
                     fields (containers, volumes, securityContext...) wrapped into a Pod:
                     kubernetes-validate --strict. Then what no schema sees: the container
                     is kserve-container on port 8080; readiness is /v2/health/ready,
                     liveness /v2/health/live; GRADCAM_MODEL_NAME is metadata.name and
                     PROTOCOL v2; the claim, the ConfigMap and the mounts are deploy/k8s's
                     and line up with GRADCAM_WEIGHTS and GRADCAM_CONFIG; the image, user,
                     resources, grace period and preStop are deployment.yaml's, the
                     replicas hpa.yaml's; Standard (raw Deployment) mode.
  docker/compose.yaml, docker/nginx.conf, config.toml
                     the limits that must agree across them and that no run exercises:
                     the upload limit (gateway = service), the timeouts (gateway above the
                     service's), stop_grace_period.

Run with the venv of scripts/setup-deploy-tools.sh (hadolint, kubernetes-validate,
PyYAML, kserve and kubernetes). Exit status 0 when every check passed.
"""

import difflib
import glob
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import kserve.models
import kubernetes.client.models
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(ROOT, "deploy", "k8s")
KSERVE = os.path.join(ROOT, "deploy", "kserve")
TOOLS = os.path.dirname(sys.executable)
failures = []


def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def tool(name):
    return os.path.join(TOOLS, name)


def service_config():
    with open(os.path.join(ROOT, "config.toml"), "rb") as f:
        return tomllib.load(f)


def variables(config):
    """GRADCAM_* names the service reads: one per config.toml setting, those shown commented
    out (`# model_name = ...`: unset by default) included, plus two."""
    text = open(os.path.join(ROOT, "config.toml")).read()
    shown = re.findall(r"^#\s*([a-z][a-z0-9_]*)\s*=", text, re.M)
    keys = [*shown, *(k for s in config.values() for k in s)]
    return {f"GRADCAM_{k.upper()}" for k in keys} | {"GRADCAM_CONFIG", "GRADCAM_LOG"}


def seconds(text):
    m = re.fullmatch(r"(\d+)(s|m)?", str(text).strip())
    return int(m[1]) * (60 if m[2] == "m" else 1) if m else None


def size_bytes(text):
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text.strip())
    return int(m[1]) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m[2].lower()] if m else None


def k8s_manifests():
    files = sorted(glob.glob(os.path.join(K8S, "*.yaml")))
    return [f for f in files if os.path.basename(f) != "kustomization.yaml"]


def k8s_docs(manifests):
    docs = {}
    for f in manifests:
        for doc in yaml.safe_load_all(open(f)):
            docs[doc["kind"]] = doc
    return docs


def lint_dockerfile():
    print("docker/Dockerfile (hadolint)")
    r = subprocess.run([tool("hadolint"), "--no-color", "docker/Dockerfile"], cwd=ROOT,
                       capture_output=True, text=True)
    for line in (r.stdout + r.stderr).strip().splitlines():
        print("       " + line)
    check(r.returncode == 0, "hadolint finds nothing")


def lint_k8s(config):
    print("deploy/k8s (kubernetes-validate --strict, then cross-references)")
    manifests = k8s_manifests()
    r = subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", *manifests],
                       capture_output=True, text=True)
    for line in (r.stdout + r.stderr).strip().splitlines():
        print("       " + line)
    check(r.returncode == 0 and manifests,
          f"{len(manifests)} manifests valid against the Kubernetes schemas, unknown fields "
          f"refused")

    docs = k8s_docs(manifests)
    kustom = yaml.safe_load(open(os.path.join(K8S, "kustomization.yaml")))
    check(sorted(kustom.get("resources", [])) == sorted(map(os.path.basename, manifests)),
          "kustomization.yaml lists every manifest")
    need = {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
            "PodDisruptionBudget"}
    if not check(need <= set(docs), f"has {', '.join(sorted(need))}"):
        return
    dep, svc, cm = docs["Deployment"], docs["Service"], docs["ConfigMap"]
    hpa, pdb = docs["HorizontalPodAutoscaler"], docs["PodDisruptionBudget"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    ctr = spec["containers"][0]

    def selects(selector):
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    check(selects(dep["spec"]["selector"]["matchLabels"]), "the Deployment selects its pods")
    check(selects(svc["spec"]["selector"]), "the Service selects the pods")
    check(selects(pdb["spec"]["selector"]["matchLabels"]), "the PodDisruptionBudget selects the pods")
    target = hpa["spec"]["scaleTargetRef"]
    check(target["kind"] == "Deployment" and target["name"] == dep["metadata"]["name"],
          "the HorizontalPodAutoscaler scales the Deployment")
    check(hpa["spec"]["minReplicas"] > pdb["spec"].get("minAvailable", 0),
          "minReplicas is above the disruption budget's minAvailable (a drain can proceed)")

    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    bind_port = ports.get("http")
    check(bind_port == 8080, f"the container port `http` is 8080, the image's ({bind_port})")
    check(all(p["targetPort"] in ports or p["targetPort"] in ports.values()
              for p in svc["spec"]["ports"]), "the Service's targetPort is the container's")
    probes = {k: ctr.get(k, {}).get("httpGet", {}) for k in
              ("readinessProbe", "livenessProbe", "startupProbe")}
    check(probes["readinessProbe"].get("path") == "/ready", "readiness probes /ready")
    check(probes["livenessProbe"].get("path") == "/health", "liveness probes /health")
    check(all(p.get("port") in ports or p.get("port") in ports.values()
              for p in probes.values() if p), "every probe names the container's port")
    check("resources" in ctr and ctr["resources"].get("requests") and
          ctr["resources"].get("limits", {}).get("memory"),
          "the container has resource requests and a memory limit")

    env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
    unknown = sorted(k for k in env if k.startswith("GRADCAM_") and k not in variables(config))
    check(not unknown, f"every GRADCAM_* variable exists (unknown: {unknown or 'none'})")
    mounts = {m["name"]: m for m in ctr.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    check(set(mounts) <= set(volumes), "every volume mount has its volume")
    cm_vol = next((n for n, v in volumes.items()
                   if v.get("configMap", {}).get("name") == cm["metadata"]["name"]), None)
    conf_path = env.get("GRADCAM_CONFIG", "")
    check(cm_vol in mounts and conf_path == os.path.join(
        mounts[cm_vol]["mountPath"], "config.toml") and "config.toml" in cm["data"],
          f"GRADCAM_CONFIG ({conf_path}) is the ConfigMap's config.toml, mounted")
    weights = env.get("GRADCAM_WEIGHTS", "")
    wmount = next((m for m in mounts.values() if weights.startswith(m["mountPath"] + "/")), None)
    check(wmount is not None and wmount.get("readOnly") and
          "persistentVolumeClaim" in volumes[wmount["name"]],
          f"GRADCAM_WEIGHTS ({weights}) is on a read-only volume from a claim")
    claims = {d["metadata"]["name"] for k, d in docs.items() if k == "PersistentVolumeClaim"}
    if wmount:
        claim = volumes[wmount["name"]]["persistentVolumeClaim"]["claimName"]
        check(claim in claims, f"the claim {claim} is among the manifests")

    try:
        cm_conf = tomllib.loads(cm["data"]["config.toml"])
    except tomllib.TOMLDecodeError as e:
        check(False, f"the ConfigMap's config.toml parses: {e}")
        return
    unknown = sorted(f"{s}.{k}" for s, keys in cm_conf.items() for k in keys
                     if k not in config.get(s, {}))
    check(not unknown, f"the ConfigMap's config.toml sets only known settings "
          f"(unknown: {unknown or 'none'})")
    merged = {s: {**config[s], **cm_conf.get(s, {})} for s in config}
    cpu = str(ctr["resources"]["requests"].get("cpu", "0"))
    cpus = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    threads = merged["model"]["threads"]
    check(0 < threads <= max(1, cpus),
          f"libtorch threads ({threads}) fit the CPU request ({cpu}); 0 would be the node's cores")
    pre = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = int(pre[1]) if pre[:1] == ["sleep"] and len(pre) == 2 else 0
    timeout = merged["server"]["request_timeout_secs"]
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(pause + timeout < grace, f"terminationGracePeriodSeconds {grace} covers preStop "
          f"{pause} s + request_timeout_secs {timeout} s")
    user = re.findall(r"^USER\s+(\S+)", open(os.path.join(ROOT, "docker", "Dockerfile")).read(),
                      re.M)
    sc = spec.get("securityContext", {})
    check(user and user[-1].split(":")[0] == str(sc.get("runAsUser")) and sc.get("runAsNonRoot"),
          f"the pod runs as the image's numeric USER ({user[-1] if user else None}), "
          f"runAsNonRoot")


# The KServe SDK's classes (kserve.models, generated from the InferenceService CRD's
# OpenAPI) name their fields' types as strings: primitives, list[...]/List[...],
# dict(str, ...)/Dict[str, ...], or a class, theirs or the Kubernetes client's (V1Container),
# a few under the Go package's name (K8sIoApiAppsV1DeploymentStrategy).
SCALARS = {"str": (str, int, float), "int": (int,), "float": (int, float), "bool": (bool,),
           "bytes": (str,), "datetime": (str,), "date": (str,),
           # int-or-string: Kubernetes quantities.
           "ResourceQuantity": (str, int, float), "V1beta1MetricQuantity": (str, int, float)}


def sdk_class(name):
    go = re.fullmatch(r"K8sIoApi[A-Z][a-z]*(V\d\w*)", name)
    for mod in (kserve.models, kubernetes.client.models):
        klass = getattr(mod, go[1] if go else name, None)
        if isinstance(klass, type) and hasattr(klass, "attribute_map"):
            return klass
    return None


def sdk_errors(value, kind, where):
    """Where `value` leaves the SDK's schema for type `kind`: a field it does not know (as
    --strict refuses them), a value of another type, a required field missing or a value
    outside an enum (the SDK's own constructors check these). The SDK's ApiClient cannot
    do it: it skips unknown fields and does not find the Kubernetes classes."""
    inner = re.fullmatch(r"(?:list\[|List\[)(.*)\]", kind)
    if inner:
        if not isinstance(value, list):
            return [f"{where}: a list expected, not {type(value).__name__}"]
        return [e for i, v in enumerate(value) for e in sdk_errors(v, inner[1], f"{where}[{i}]")]
    inner = re.fullmatch(r"(?:dict\(str, (.*)\)|Dict\[str, (.*)\])", kind)
    if inner:
        if not isinstance(value, dict):
            return [f"{where}: a map expected, not {type(value).__name__}"]
        return [e for k, v in value.items()
                for e in sdk_errors(v, inner[1] or inner[2], f"{where}.{k}")]
    if kind == "object" or value is None:
        return []
    if kind in SCALARS:
        ok = isinstance(value, SCALARS[kind]) and (kind == "bool" or not isinstance(value, bool))
        return [] if ok else [f"{where}: {kind} expected, not {value!r}"]
    klass = sdk_class(kind)
    if klass is None:
        return [f"{where}: the SDK names type {kind}, which it does not define"]
    if not isinstance(value, dict):
        return [f"{where}: an object ({kind}) expected, not {value!r}"]
    fields = {json: attr for attr, json in klass.attribute_map.items()}
    errors = [f"{where}.{k}: unknown field of {kind}"
              + "".join(f" (did you mean {m}?)" for m in difflib.get_close_matches(k, fields, 1))
              for k in value if k not in fields]
    for k, v in value.items():
        if k in fields:
            errors += sdk_errors(v, klass.openapi_types[fields[k]], f"{where}.{k}")
    if klass.__module__.startswith("kserve."):
        try:
            klass(**{fields[k]: v for k, v in value.items() if k in fields})
        except (ValueError, TypeError) as e:
            errors.append(f"{where}: {kind}: {e}")
    return errors


def lint_kserve(config):
    print(f"deploy/kserve (the InferenceService schema of the KServe SDK "
          f"{importlib.metadata.version('kserve')}; the pod with kubernetes-validate --strict; "
          f"then cross-references)")
    files = sorted(glob.glob(os.path.join(KSERVE, "*.yaml")))
    isvcs = [(f, d) for f in files for d in yaml.safe_load_all(open(f)) if d]
    if not check(isvcs and all(d.get("apiVersion") == "serving.kserve.io/v1beta1" and
                               d.get("kind") == "InferenceService" for _, d in isvcs),
                 f"{len(isvcs)} manifest(s), each a serving.kserve.io/v1beta1 InferenceService"):
        return
    k8s = k8s_docs(k8s_manifests())
    dep, cm, pvc, hpa = (k8s.get(k, {}) for k in (
        "Deployment", "ConfigMap", "PersistentVolumeClaim", "HorizontalPodAutoscaler"))
    dep_pod = dep["spec"]["template"]["spec"]
    dep_ctr = dep_pod["containers"][0]
    pod_fields = set(kubernetes.client.models.V1PodSpec.attribute_map.values())
    for path, isvc in isvcs:
        name = (isvc.get("metadata") or {}).get("name")
        label = f"{os.path.relpath(path, ROOT)} ({name})"
        errors = sdk_errors({k: v for k, v in isvc.items() if k != "status"},
                            "V1beta1InferenceService", "")
        for e in errors:
            print("       " + e.lstrip("."))
        check(not errors and "status" not in isvc,
              f"{label}: valid against the SDK's InferenceService schema, unknown fields refused, "
              f"no status")
        pred = (isvc.get("spec") or {}).get("predictor")
        if not isinstance(pred, dict) or not name:
            continue
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {k: v for k, v in pred.items() if k in pod_fields}}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(pod, f)
            f.flush()
            r = subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", f.name],
                               capture_output=True, text=True)
        for line in (r.stdout + r.stderr).strip().splitlines():
            print("       " + line.replace(f.name, "the predictor's pod"))
        check(r.returncode == 0, f"{label}: the predictor's pod fields "
              f"({', '.join(sorted(pod['spec']))}) as a Pod: valid against the Kubernetes "
              f"schemas, unknown fields refused")

        mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
        check(mode in ("Standard", "RawDeployment"),
              f"deploymentMode Standard ({mode}): Knative would refuse the claim, preStop and "
              f"the port's name")
        ctrs = pred.get("containers", [])
        ctr = ctrs[0] if ctrs else {}
        check(len(ctrs) == 1 and ctr.get("name") == "kserve-container",
              f"one container, named kserve-container ({ctr.get('name')})")
        ports = ctr.get("ports", [])
        port = ports[0].get("containerPort") if ports else None
        check(port == 8080, f"the container's (first) port is 8080, the image's ({port})")
        names = {port, *(p.get("name") for p in ports[:1])}
        probes = {k: ctr.get(k, {}).get("httpGet", {}) for k in
                  ("readinessProbe", "livenessProbe", "startupProbe")}
        ready, live, start = (probes[k].get("path") for k in probes)
        check(ready == "/v2/health/ready", f"readiness probes /v2/health/ready ({ready})")
        check(live == "/v2/health/live", f"liveness probes /v2/health/live ({live})")
        startup = ctr.get("startupProbe", {})
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        check(start == live and budget >= 150,
              f"the startup probe is liveness's ({start}), {budget} s for loading (>= 150)")
        check(all(p.get("port") in names for p in probes.values() if p),
              "every probe names the container's port")

        env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
        unknown = sorted(k for k in env if k.startswith("GRADCAM_") and k not in variables(config))
        check(not unknown, f"every GRADCAM_* variable exists (unknown: {unknown or 'none'})")
        served = env.get("GRADCAM_MODEL_NAME")
        flags = [a for a in ctr.get("args", []) + ctr.get("command", [])
                 if a.startswith(("--model-name", "--model_name"))]
        check(served == name and not flags,
              f"GRADCAM_MODEL_NAME ({served}) is metadata.name, no --model-name in args: the "
              f"name KServe assumes")
        check(env.get("PROTOCOL") == "v2",
              f"PROTOCOL is v2 ({env.get('PROTOCOL')}): how KServe learns a custom "
              f"predictor's protocol")

        mounts = {m["name"]: m for m in ctr.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pred.get("volumes", [])}
        check(set(mounts) <= set(volumes), "every volume mount has its volume")
        cm_name = cm.get("metadata", {}).get("name")
        cm_vol = next((n for n, v in volumes.items()
                       if v.get("configMap", {}).get("name") == cm_name), None)
        conf = env.get("GRADCAM_CONFIG", "")
        check(cm_vol in mounts and conf == os.path.join(mounts[cm_vol]["mountPath"],
                                                        "config.toml"),
              f"GRADCAM_CONFIG ({conf}) is configmap.yaml's config.toml ({cm_name}), mounted")
        weights = env.get("GRADCAM_WEIGHTS", "")
        wmount = next((m for m in mounts.values() if weights.startswith(m["mountPath"] + "/")),
                      None)
        wvol = volumes.get(wmount["name"], {}) if wmount else {}
        claim = wvol.get("persistentVolumeClaim", {}).get("claimName")
        pvc_name = pvc.get("metadata", {}).get("name")
        check(wmount is not None and wmount.get("readOnly") and claim is not None,
              f"GRADCAM_WEIGHTS ({weights}) is on a read-only volume from a claim")
        check(claim == pvc_name, f"the claim ({claim}) is models-pvc.yaml's ({pvc_name})")

        # The rest as deployment.yaml has it (lint_k8s checks those against the image,
        # config.toml and the ConfigMap).
        differ = [k for k, a, b in [
            ("image", ctr.get("image"), dep_ctr.get("image")),
            ("args", ctr.get("args"), dep_ctr.get("args")),
            ("resources", ctr.get("resources"), dep_ctr.get("resources")),
            ("container securityContext", ctr.get("securityContext"),
             dep_ctr.get("securityContext")),
            ("lifecycle (preStop)", ctr.get("lifecycle"), dep_ctr.get("lifecycle")),
            ("pod securityContext", pred.get("securityContext"), dep_pod.get("securityContext")),
            ("terminationGracePeriodSeconds", pred.get("terminationGracePeriodSeconds"),
             dep_pod.get("terminationGracePeriodSeconds")),
            ("GRADCAM_CONFIG, GRADCAM_WEIGHTS, GRADCAM_LOG",
             [env.get(k) for k in ("GRADCAM_CONFIG", "GRADCAM_WEIGHTS", "GRADCAM_LOG")],
             [{e["name"]: e.get("value") for e in dep_ctr.get("env", [])}.get(k)
              for k in ("GRADCAM_CONFIG", "GRADCAM_WEIGHTS", "GRADCAM_LOG")]),
            ("probes' timing", [{k: v for k, v in ctr.get(p, {}).items() if k != "httpGet"}
                                for p in probes],
             [{k: v for k, v in dep_ctr.get(p, {}).items() if k != "httpGet"} for p in probes]),
        ] if a != b]
        check(not differ, f"image, args, resources, securityContexts, preStop, grace period, "
              f"env and the probes' timing are deployment.yaml's (differ: {differ or 'none'})")
        metric = hpa.get("spec", {}).get("metrics", [{}])[0].get("resource", {})
        want = (hpa.get("spec", {}).get("minReplicas"), hpa.get("spec", {}).get("maxReplicas"),
                metric.get("name"), metric.get("target", {}).get("averageUtilization"))
        have = tuple(pred.get(k) for k in ("minReplicas", "maxReplicas", "scaleMetric",
                                           "scaleTarget"))
        check(have == want, f"replicas and scaling are hpa.yaml's: min, max, metric, target "
              f"{have} = {want}")


def lint_compose(config):
    print("docker/compose.yaml, docker/nginx.conf, config.toml (limits that must agree)")
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker", "compose.yaml")))
    app = compose["services"]["gradcam"]
    env = app.get("environment", {})
    code = "\n".join(l.split("#")[0] for l in open(os.path.join(ROOT, "docker", "nginx.conf")))

    def nginx(name):
        m = re.findall(rf"^\s*{name}\s+([^;]+);", code, re.M)
        return m[0].strip() if len(m) == 1 else ""

    unknown = sorted(k for k in env if k.startswith("GRADCAM_") and k not in variables(config))
    check(not unknown, f"compose's GRADCAM_* variables exist (unknown: {unknown or 'none'})")
    limit = int(env.get("GRADCAM_MAX_UPLOAD_BYTES", config["server"]["max_upload_bytes"]))
    gateway = size_bytes(nginx("client_max_body_size"))
    check(limit == config["server"]["max_upload_bytes"] == gateway,
          f"upload limit: nginx client_max_body_size ({gateway}) = compose ({limit}) = "
          f"config.toml ({config['server']['max_upload_bytes']}); a lower gateway limit "
          f"refuses what the service takes, a higher one turns its 413 into a 502")
    timeout = int(env.get("GRADCAM_REQUEST_TIMEOUT_SECS",
                          config["server"]["request_timeout_secs"]))
    for key in ("proxy_read_timeout", "proxy_send_timeout"):
        value = seconds(nginx(key).rstrip("s") + "s") if nginx(key) else None
        check(value is not None and timeout < value <= timeout + 15,
              f"nginx {key} ({value} s) is a little above request_timeout_secs ({timeout} s)")
    grace = seconds(app.get("stop_grace_period", "10s"))
    check(grace is not None and grace >= timeout,
          f"stop_grace_period ({grace} s) lets in-flight requests finish ({timeout} s)")
    test = app.get("healthcheck", {}).get("test", "")
    test = test if isinstance(test, str) else " ".join(test)
    check("/ready" in test, f"the replicas' health check is readiness ({test})")


def main():
    config = service_config()
    lint_dockerfile()
    lint_k8s(config)
    lint_kserve(config)
    lint_compose(config)
    if failures:
        print(f"deploy-lint: FAILED, {len(failures)} check(s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("deploy-lint: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
