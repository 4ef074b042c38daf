#!/usr/bin/env python3
"""Checks of the deployment files that need no Docker engine (none runs on these machines,
and `docker compose config` / `docker build --check` need one):

  docker/Dockerfile    every COPY source exists and is not excluded by .dockerignore; every
                       --from= names an earlier stage; the final stage runs as a non-root
                       user, has a HEALTHCHECK on /health, exposes 8080; every GRADCAM_*
                       variable it sets is one the service reads; its torch version is the
                       one scripts/setup-libtorch.sh installs; the files the Rust build
                       reads (include_str!/include_bytes!) are copied in.
  .dockerignore        keeps target/, weights, venvs and .git out of the build context.
  docker/compose.yaml  parses; builds from the repository root with docker/Dockerfile;
                       the gateway mounts docker/nginx.conf and waits for healthy (/ready)
                       replicas; the replicas' GRADCAM_* variables exist; upload limit and
                       timeouts agree with nginx.conf and config.toml.
  docker/nginx.conf    `nginx -t` on it as the gateway test renders it (when nginx is here).
  collect-libs.sh      when run as root with `unshare`: the release binary explains an image
                       with ONLY the libtorch files docker/collect-libs.sh picks (the real
                       torch install hidden behind them in a private mount namespace), which
                       is what the runtime stage of the image gets.

Needs PyYAML: uses the one importable, or installs it once into a throwaway venv under
/tmp. Exit status 0 when every check passed.
"""

import fnmatch
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(ROOT, "docker")
BIN = os.path.join(ROOT, "target", "release", "gradcam-serve")

try:
    import yaml
except ImportError:  # a throwaway venv with PyYAML, once, then run again inside it
    venv = "/tmp/gradcam-docker-lint-venv"
    py = os.path.join(venv, "bin", "python")
    if os.environ.get("GRADCAM_DOCKER_LINT_REEXEC"):
        raise SystemExit("docker-lint: PyYAML still missing in " + venv)
    if not os.path.exists(os.path.join(venv, ".complete")):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "pyyaml"], check=True)
        open(os.path.join(venv, ".complete"), "w").close()
    os.environ["GRADCAM_DOCKER_LINT_REEXEC"] = "1"
    os.execv(py, [py, *sys.argv])

failures = []


def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def note(what):
    print("  --   " + what, flush=True)


# ---------------------------------------------------------------------------- settings

def known_variables():
    """GRADCAM_* variables the service reads: from `serve --help` when the binary is built,
    else derived from config.toml (every setting there has one) plus the two extra ones."""
    names = set()
    if os.access(BIN, os.X_OK):
        for sub in ("serve", "fetch-weights"):
            out = subprocess.run([BIN, sub, "--help"], capture_output=True, text=True).stdout
            names |= set(re.findall(r"\[env: (GRADCAM_[A-Z0-9_]+)", out))
    with open(os.path.join(ROOT, "config.toml"), "rb") as f:
        config = tomllib.load(f)
    derived = {f"GRADCAM_{k.upper()}" for section in config.values() for k in section}
    if names:
        check(derived <= names, "every config.toml setting has a GRADCAM_* variable in "
              f"`serve --help` (missing: {sorted(derived - names) or 'none'})")
    names |= derived | {"GRADCAM_CONFIG", "GRADCAM_LOG"}
    return names, config


def resolve(value):
    """Compose interpolation with the defaults: ${VAR:-default} / ${VAR-default} / ${VAR}."""
    def one(m):
        return os.environ.get(m.group(1)) or (m.group(3) or "")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-([^}]*))?\}", one, str(value))


def size_bytes(text):
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text.strip())
    return int(m[1]) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m[2].lower()] if m else 0


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", text.strip())
    return int(m[1]) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[m[2]] if m else 0


# ---------------------------------------------------------------------------- .dockerignore

def dockerignore_patterns():
    path = os.path.join(ROOT, ".dockerignore")
    patterns = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line and not line.startswith("#"):
                neg = line.startswith("!")
                patterns.append((neg, os.path.normpath(line.lstrip("!").strip("/"))))
    return patterns


def pattern_regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(rel, patterns):
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for neg, pattern in patterns:
        rx = pattern_regex(pattern)
        if any(rx.match(p) for p in prefixes):
            result = not neg
    return result


def lint_dockerignore():
    print(".dockerignore")
    patterns = dockerignore_patterns()
    if not check(bool(patterns), ".dockerignore exists and has patterns"):
        return patterns
    for rel in ("target/release/gradcam-serve", "target/parity/reference.json",
                "weights/resnet50.safetensors", "fuzz/target/x", "fuzz/corpus/x", ".git/HEAD",
                ".venv/bin/python", "bench/__pycache__/run.cpython-311.pyc",
                "tests/reference/.venv/pyvenv.cfg"):
        check(ignored(rel, patterns), f"keeps {rel} out of the build context")
    return patterns


# ---------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions(path):
    """(line number, KEYWORD, rest) with continuation lines joined, comments dropped."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(open(path), 1):
        line = raw.rstrip("\n")
        if line.lstrip().startswith("#"):
            continue  # comments, also inside a continued instruction
        if not buf:
            start = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            keyword, _, rest = buf.strip().partition(" ")
            out.append((start, keyword.upper(), rest.strip()))
        buf = ""
    return out


def split_flags(rest):
    flags, words = {}, rest.split()
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, " ".join(words)


def lint_dockerfile(patterns, variables):
    print("docker/Dockerfile")
    path = os.path.join(DOCKER, "Dockerfile")
    if not check(os.path.exists(path), "docker/Dockerfile exists"):
        return set()
    instructions = dockerfile_instructions(path)
    global_args, stage_args, stages = {}, {}, []
    final = {"USER": None, "HEALTHCHECK": None, "EXPOSE": [], "ENTRYPOINT": None, "ENV": {}}
    copied_dests, copied_sources = [], []
    for n, keyword, rest in instructions:
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            (stage_args if stages else global_args)[name.strip()] = default.strip().strip('"')
        elif keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m[1], "?"), words[0])
            check("?" not in image, f"line {n}: FROM {words[0]} -> {image}: every ARG defined")
            name = words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(name)
            stage_args = {}
            final = {"USER": None, "HEALTHCHECK": None, "EXPOSE": [], "ENTRYPOINT": None,
                     "ENV": {}}
        elif keyword in ("COPY", "ADD"):
            flags, args = split_flags(rest)
            if args.startswith("["):
                import json
                words = json.loads(args)
            else:
                words = args.split()
            sources, dest = words[:-1], words[-1]
            copied_dests.append(dest)
            if "from" in flags:
                ref = flags["from"].lower()
                earlier = stages[:-1]
                ok = ref in earlier or (ref.isdigit() and int(ref) < len(earlier))
                check(ok, f"line {n}: COPY --from={ref} names an earlier stage "
                      f"({', '.join(s for s in earlier if s) or 'none'})")
                continue
            for src in sources:
                rel = os.path.normpath(src).lstrip("/")
                matches = glob.glob(os.path.join(ROOT, rel))
                exists = check(bool(matches), f"line {n}: COPY source {src} exists")
                if exists:
                    check(not ignored(rel, patterns),
                          f"line {n}: COPY source {src} is not excluded by .dockerignore")
                    copied_sources.append(rel)
        elif keyword == "ENV":
            for k, v in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", rest):
                final["ENV"][k] = v.strip('"')
        elif keyword in final:
            final[keyword] = rest if keyword != "EXPOSE" else final["EXPOSE"] + rest.split()
    check(len(stages) >= 2, f"multi-stage ({len(stages)} stages: {stages})")
    check(len(set(s for s in stages if s)) == len([s for s in stages if s]),
          "stage names are unique")
    check(final["USER"] is not None and final["USER"].split(":")[0] not in ("root", "0"),
          f"the final stage runs as a non-root user ({final['USER']})")
    hc = final["HEALTHCHECK"] or ""
    check("/health" in hc, f"the final stage has a HEALTHCHECK on /health ({hc[:60]}...)")
    hc_cmd = re.search(r'CMD \[?"?([\w./-]+)', hc)
    if hc_cmd:
        check(any(d.rstrip("/").endswith("/" + hc_cmd[1]) or d == hc_cmd[1] for d in copied_dests),
              f"the health check's command {hc_cmd[1]} is copied into the image")
    check("8080" in final["EXPOSE"], f"the final stage exposes 8080 ({final['EXPOSE']})")
    check(final["ENTRYPOINT"] is not None, "the final stage has an ENTRYPOINT")
    env = final["ENV"]
    unknown = sorted(k for k in env if k.startswith("GRADCAM_") and k not in variables)
    check(not unknown, f"every GRADCAM_* variable set exists ({len(env)} set; unknown: "
          f"{unknown or 'none'})")
    check(env.get("GRADCAM_BIND", "").endswith(":8080") and not env["GRADCAM_BIND"].startswith("127."),
          f"GRADCAM_BIND listens on all interfaces, port 8080 ({env.get('GRADCAM_BIND')})")
    check(env.get("GRADCAM_DEMO_WEIGHTS") == "false",
          "demo weights are off unless GRADCAM_DEMO_WEIGHTS=true is passed")

    # The torch the image installs is the one tch links against here.
    setup = open(os.path.join(ROOT, "scripts", "setup-libtorch.sh")).read()
    wanted = re.search(r"torch==([\d.]+)", setup)[1]
    torch_arg = re.search(r"^ARG TORCH_VERSION=([\d.]+)", open(path).read(), re.M)
    check(torch_arg is not None and torch_arg[1] == wanted,
          f"ARG TORCH_VERSION={torch_arg and torch_arg[1]} is setup-libtorch.sh's {wanted}")

    # Files the Rust build reads must be in the image's build stage.
    for rs in glob.glob(os.path.join(ROOT, "src", "**", "*.rs"), recursive=True):
        for inc in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', open(rs).read()):
            rel = os.path.relpath(os.path.normpath(os.path.join(os.path.dirname(rs), inc)), ROOT)
            check(any(rel == s or rel.startswith(s.rstrip("/") + "/") for s in copied_sources),
                  f"{os.path.relpath(rs, ROOT)} includes {rel}, which is copied in")
    return set(copied_sources)


def lint_dummy_build(copied):
    """The dependency layer builds a dummy crate from Cargo.toml, Cargo.lock and build.rs;
    cargo must accept that manifest with only src/main.rs and src/lib.rs present."""
    if not shutil.which("cargo"):
        note("cargo not here: dummy-crate manifest check skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("Cargo.toml", "Cargo.lock", "build.rs"):
            shutil.copy(os.path.join(ROOT, f), tmp)
        # The benchmark harness is a workspace member: its manifest, a dummy main.
        os.makedirs(os.path.join(tmp, "bench", "src"))
        for f in ("Cargo.toml", "build.rs"):
            shutil.copy(os.path.join(ROOT, "bench", f), os.path.join(tmp, "bench"))
        open(os.path.join(tmp, "bench", "src", "main.rs"), "w").write("fn main() {}\n")
        os.makedirs(os.path.join(tmp, "src"))
        open(os.path.join(tmp, "src", "main.rs"), "w").write("fn main() {}\n")
        open(os.path.join(tmp, "src", "lib.rs"), "w").write("")
        r = subprocess.run(["cargo", "metadata", "--format-version", "1", "--offline",
                            "--locked", "--no-deps"], cwd=tmp, capture_output=True, text=True)
        check(r.returncode == 0, "cargo accepts the dummy crate of the dependency layer"
              + ("" if r.returncode == 0 else f": {r.stderr.strip()[-300:]}"))


# ---------------------------------------------------------------------------- compose

def nginx_settings():
    text = open(os.path.join(DOCKER, "nginx.conf")).read()
    code = "\n".join(l.split("#")[0] for l in text.splitlines())
    def one(name):
        m = re.findall(rf"^\s*{name}\s+([^;]+);", code, re.M)
        return m[0].strip() if len(m) == 1 else None
    upstream = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\b", code, re.M)
    return {k: one(k) for k in ("client_max_body_size", "proxy_read_timeout",
                                "proxy_send_timeout", "proxy_next_upstream")}, upstream


def lint_compose(variables, config):
    print("docker/compose.yaml")
    path = os.path.join(DOCKER, "compose.yaml")
    if not check(os.path.exists(path), "docker/compose.yaml exists"):
        return
    try:
        doc = yaml.safe_load(open(path))
    except yaml.YAMLError as e:
        check(False, f"compose.yaml parses: {e}")
        return
    check(isinstance(doc, dict) and isinstance(doc.get("services"), dict),
          "compose.yaml parses, with services")
    services = doc.get("services") or {}
    app_name = next((n for n, s in services.items() if isinstance(s, dict) and "build" in s), None)
    gw_name = next((n for n, s in services.items() if isinstance(s, dict)
                    and "nginx" in resolve(s.get("image", ""))), None)
    if not (check(app_name is not None, f"a service built from the Dockerfile ({app_name})")
            and check(gw_name is not None, f"an nginx gateway service ({gw_name})")):
        return
    app, gw = services[app_name], services[gw_name]
    for name, svc in services.items():
        unknown = set(svc) - {"build", "image", "deploy", "environment", "volumes", "expose",
                              "ports", "healthcheck", "depends_on", "restart",
                              "stop_grace_period", "command", "entrypoint", "env_file",
                              "networks", "labels", "logging", "user", "read_only", "tmpfs"}
        check(not unknown, f"service {name}: known keys only ({sorted(unknown) or 'ok'})")

    build = app["build"]
    context = os.path.normpath(os.path.join(DOCKER, build.get("context", ".")))
    check(context == ROOT, f"{app_name} builds with the repository root as context")
    check(os.path.exists(os.path.join(context, build.get("dockerfile", "Dockerfile"))),
          f"{app_name}'s dockerfile {build.get('dockerfile')} exists")
    for arg in (build.get("args") or {}):
        check(re.search(rf"^ARG {arg}\b", open(os.path.join(DOCKER, "Dockerfile")).read(), re.M)
              is not None, f"build arg {arg} is declared in the Dockerfile")
    replicas = resolve((app.get("deploy") or {}).get("replicas", 1))
    check(replicas.isdigit() and int(replicas) >= 2,
          f"{app_name} runs N replicas (deploy.replicas defaults to {replicas})")
    check("ports" not in app, f"{app_name} publishes no port: only the gateway is reachable")

    env = {k: resolve(v) for k, v in (app.get("environment") or {}).items()}
    unknown = sorted(k for k in env if k.startswith("GRADCAM_") and k not in variables)
    check(not unknown, f"{app_name}: every GRADCAM_* variable exists (unknown: "
          f"{unknown or 'none'})")
    for k, v in env.items():
        check(v != "" , f"{app_name}: {k} is not empty by default (empty values are refused)")
    hc = app.get("healthcheck") or {}
    test = hc.get("test")
    test_text = " ".join(test) if isinstance(test, list) else str(test)
    check("/ready" in test_text, f"{app_name}'s health check is readiness (/ready): {test_text}")
    dep = (gw.get("depends_on") or {}).get(app_name) if isinstance(gw.get("depends_on"), dict) else None
    check(isinstance(dep, dict) and dep.get("condition") == "service_healthy",
          f"{gw_name} waits for healthy {app_name} replicas (depends_on condition)")

    mounts = [resolve(v) for v in gw.get("volumes") or []]
    conf = [m for m in mounts if m.split(":")[1:2] == ["/etc/nginx/nginx.conf"]]
    check(len(conf) == 1 and os.path.normpath(os.path.join(DOCKER, conf[0].split(":")[0]))
          == os.path.join(DOCKER, "nginx.conf"),
          f"{gw_name} mounts docker/nginx.conf as /etc/nginx/nginx.conf ({conf})")
    for m in [resolve(v) for v in app.get("volumes") or []]:
        src = m.split(":")[0]
        if src.startswith("."):
            check(os.path.isdir(os.path.join(DOCKER, src)),
                  f"{app_name} volume source {src} exists (relative to docker/)")
    check(any(str(p).endswith(":8080") for p in (resolve(p) for p in gw.get("ports") or [])),
          f"{gw_name} publishes its port 8080")

    # Agreement between the service's settings, compose and nginx.conf.
    nginx, upstream = nginx_settings()
    port = env.get("GRADCAM_BIND", config["server"]["bind"]).rsplit(":", 1)[1]
    check(upstream == [(app_name, port)],
          f"nginx's upstream is {app_name}:{port}, where the replicas listen ({upstream})")
    check(port in [str(p) for p in app.get("expose") or []], f"{app_name} exposes {port}")
    service_limit = int(env.get("GRADCAM_MAX_UPLOAD_BYTES", config["server"]["max_upload_bytes"]))
    gateway_limit = size_bytes(nginx["client_max_body_size"] or "0")
    check(service_limit == config["server"]["max_upload_bytes"],
          f"compose's upload limit is config.toml's ({service_limit})")
    check(gateway_limit == service_limit,
          f"gateway client_max_body_size ({gateway_limit}) equals the service's "
          f"max_upload_bytes ({service_limit}): not below it, and not above it (the service "
          f"would refuse before reading and nginx would see a broken pipe)")
    timeout = int(env.get("GRADCAM_REQUEST_TIMEOUT_SECS",
                          config["server"]["request_timeout_secs"]))
    check(timeout == config["server"]["request_timeout_secs"],
          f"compose's request timeout is config.toml's ({timeout} s)")
    for key in ("proxy_read_timeout", "proxy_send_timeout"):
        value = seconds(nginx[key] or "0")
        check(timeout < value <= timeout + 15,
              f"nginx {key} {value:g} s is a little above request_timeout_secs {timeout} s")
    grace = seconds(str(app.get("stop_grace_period", "10s")))
    check(grace >= timeout, f"stop_grace_period {grace:g} s lets in-flight requests finish")
    retry = (nginx["proxy_next_upstream"] or "").split()
    check({"error", "http_503", "non_idempotent"} <= set(retry) and "http_504" not in retry,
          f"nginx resends a POST refused with 503 or a dropped connection, not a 504 ({retry})")


def lint_nginx():
    print("docker/nginx.conf")
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not nginx:
        note("nginx not installed: `nginx -t` skipped (scripts/gateway-test.sh installs it)")
        return
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import gateway_test
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        for d in ("log", "cache"):
            os.makedirs(os.path.join(tmp, d))
        conf = os.path.join(tmp, "nginx.conf")
        open(conf, "w").write(gateway_test.render(open(os.path.join(DOCKER, "nginx.conf")).read(),
                                                  18080, [18081, 18082], tmp))
        r = subprocess.run([nginx, "-t", "-p", tmp, "-c", conf, "-e",
                            os.path.join(tmp, "log", "error.log")], capture_output=True, text=True)
        check(r.returncode == 0, "nginx -t accepts docker/nginx.conf (rendered for loopback)"
              + ("" if r.returncode == 0 else ": " + r.stderr.strip()[-400:]))


# ---------------------------------------------------------------------------- libraries

# Shared libraries of debian:bookworm-slim (libc6, libgcc-s1, libstdc++6: apt needs them).
SLIM_BASE_LIBS = {"libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
                  "libutil.so.1", "ld-linux-x86-64.so.2", "libstdc++.so.6", "libgcc_s.so.1"}


def lint_runtime_libraries():
    print("docker/collect-libs.sh")
    script = os.path.join(DOCKER, "collect-libs.sh")
    if not os.access(BIN, os.X_OK):
        note("no release binary: library check skipped")
        return
    if os.geteuid() != 0 or not shutil.which("unshare"):
        note("not root or no unshare: library check skipped")
        return
    ldd = subprocess.run(["ldd", BIN], capture_output=True, text=True).stdout
    m = re.search(r"libtorch_cpu\.so => (\S+)", ldd)
    if not check(m is not None, "the binary links libtorch_cpu.so"):
        return
    prefix = os.path.dirname(m[1])  # the torch install's root: the folder with pyvenv.cfg
    while prefix != "/" and not os.path.exists(os.path.join(prefix, "pyvenv.cfg")):
        prefix = os.path.dirname(prefix)
    if prefix == "/":
        prefix = os.path.dirname(os.path.dirname(m[1]))  # a plain libtorch folder
    with tempfile.TemporaryDirectory() as tmp:
        stage = os.path.join(tmp, "staging")
        r = subprocess.run([script, BIN, prefix, stage], capture_output=True, text=True,
                           env={**os.environ, "COLLECT_LIBS_LINK": "1"})
        if not check(r.returncode == 0, "collect-libs.sh resolves every library"
                     + ("" if r.returncode == 0 else ": " + r.stderr.strip()[-300:])):
            return
        picked = [os.path.basename(p) for p in r.stdout.split()]
        check({"libtorch_cpu.so", "libc10.so"} <= set(picked),
              f"it picks {', '.join(picked)}")
        image = os.path.join(tmp, "probe.png")
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import gateway_test
        open(image, "wb").write(gateway_test.gradient_png(32, 32))
        # A private mount namespace: the torch install is replaced by the picked files only,
        # for this one command; nothing outside it sees the mount.
        cmd = (f'mount --bind "{stage}{prefix}" "{prefix}" && ldd "{BIN}" && echo @@ && '
               f'"{BIN}" explain --demo-weights --weights /nonexistent "{image}" --json')
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", cmd],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0 and "unshare" in r.stderr and "ermission" in r.stderr:
            note(f"unshare not permitted here: library check skipped ({r.stderr.strip()})")
            return
        # Everything else must come from debian:bookworm-slim itself: the host has more
        # (a libgomp from gcc, say) that would hide a library collect-libs.sh forgot.
        listing = r.stdout.split("@@")[0]
        outside = sorted({os.path.basename(p) for p in re.findall(r"=> (/\S+)", listing)
                          if not p.startswith(prefix + "/")} - SLIM_BASE_LIBS)
        check(r.returncode == 0 and not outside and "not found" not in listing,
              "with only those files, every other library the binary loads is in "
              f"debian:bookworm-slim (others: {outside or 'none'})")
        check(r.returncode == 0 and '"prediction"' in r.stdout,
              "the binary explains an image with only those libraries in place"
              + ("" if r.returncode == 0 else ": " + r.stderr.strip()[-300:]))


def main():
    variables, config = known_variables()
    patterns = lint_dockerignore()
    copied = lint_dockerfile(patterns, variables)
    lint_dummy_build(copied)
    lint_compose(variables, config)
    lint_nginx()
    lint_runtime_libraries()
    if failures:
        print(f"docker-lint: FAILED, {len(failures)} check(s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("docker-lint: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
