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
  docker/compose.yaml, docker/nginx.conf, config.toml
                     the limits that must agree across them and that no run exercises:
                     the upload limit (gateway = service), the timeouts (gateway above the
                     service's), stop_grace_period.

Run with the venv of scripts/setup-deploy-tools.sh (hadolint, kubernetes-validate,
PyYAML). Exit status 0 when every check passed.
"""

import glob
import os
import re
import subprocess
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(ROOT, "deploy", "k8s")
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
    """GRADCAM_* names the service reads: one per config.toml setting, plus two."""
    return {f"GRADCAM_{k.upper()}" for s in config.values() for k in s} | {
        "GRADCAM_CONFIG", "GRADCAM_LOG"}


def seconds(text):
    m = re.fullmatch(r"(\d+)(s|m)?", str(text).strip())
    return int(m[1]) * (60 if m[2] == "m" else 1) if m else None


def size_bytes(text):
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text.strip())
    return int(m[1]) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m[2].lower()] if m else None


def lint_dockerfile():
    print("docker/Dockerfile (hadolint)")
    r = subprocess.run([tool("hadolint"), "--no-color", "docker/Dockerfile"], cwd=ROOT,
                       capture_output=True, text=True)
    for line in (r.stdout + r.stderr).strip().splitlines():
        print("       " + line)
    check(r.returncode == 0, "hadolint finds nothing")


def lint_k8s(config):
    print("deploy/k8s (kubernetes-validate --strict, then cross-references)")
    files = sorted(glob.glob(os.path.join(K8S, "*.yaml")))
    manifests = [f for f in files if os.path.basename(f) != "kustomization.yaml"]
    r = subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", *manifests],
                       capture_output=True, text=True)
    for line in (r.stdout + r.stderr).strip().splitlines():
        print("       " + line)
    check(r.returncode == 0 and manifests,
          f"{len(manifests)} manifests valid against the Kubernetes schemas, unknown fields "
          f"refused")

    docs = {}
    for f in manifests:
        for doc in yaml.safe_load_all(open(f)):
            docs[doc["kind"]] = doc
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
