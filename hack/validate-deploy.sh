#!/usr/bin/env bash
# Validate deploy/ offline, as CI does:
#   manifests  every YAML document under deploy/ against the Kubernetes API schemas
#              of K8S_VERSION (strict: unknown fields are errors), CRD, kustomize and
#              Flux kinds against our own schemas (tests/deploy/schemas), and
#              cross-document checks; then every kustomization built (kubectl
#              kustomize, from the pinned kubectl wheel in the venv) with and without
#              the components in deploy/components, and each build validated the
#              same way (tests/deploy/render_kustomizations.py); and the
#              Containerfile's COPY sources, stages and packages (no image is built);
#   flags      the zfs-csi container's args and env, run through the real binary
#              (${ZFS_CSI_BIN:-target/debug/zfs-csi} ... --print-config);
#   import-output DIR
#              only the YAML that `zfs-csi import` printed in the VM tests (tests/cli.rs
#              writes it; hack/test.sh passes the directory), the same way as manifests.
# Usage: hack/validate-deploy.sh [manifests|flags|all|import-output DIR]   (default all)
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest Kubernetes the pinned csi-provisioner (v6) supports.
K8S_VERSION=1.34.0
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/zfs-csi/venv-deploy
REQUIREMENTS=tests/deploy/requirements.txt
ZFS_CSI_BIN=${ZFS_CSI_BIN:-target/debug/zfs-csi}
step=${1:-all}
usage="usage: $0 [manifests|flags|all|import-output DIR]"
case $step in
  manifests|flags|all) ;;
  import-output) [ -d "${2:-}" ] || { echo "$usage" >&2; exit 2; } ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements" 2>/dev/null)" = "$want" ]; then
  echo "==> reusing Python venv $VENV"
else
  echo "==> creating Python venv $VENV from $REQUIREMENTS"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$want" > "$VENV/.requirements"
fi
py=$VENV/bin/python

if [ "$step" = import-output ]; then
  echo "==> zfs-csi import output in $2: Kubernetes $K8S_VERSION schemas (strict), claimRef and PVC agree"
  exec "$py" tests/deploy/validate_manifests.py --kubernetes-version "$K8S_VERSION" --schemas tests/deploy/schemas "$2"
fi

status=0
if [ "$step" != flags ]; then
  echo "==> manifests under deploy/: Kubernetes $K8S_VERSION schemas (strict) and tests/deploy/schemas"
  "$py" tests/deploy/validate_manifests.py --kubernetes-version "$K8S_VERSION" \
    --schemas tests/deploy/schemas deploy || status=1

  echo "==> kustomize builds of every kustomization under deploy/, with and without the components"
  "$py" tests/deploy/render_kustomizations.py --kubectl "$VENV/bin/kubectl" \
    --kubernetes-version "$K8S_VERSION" --schemas tests/deploy/schemas deploy || status=1

  echo "==> deploy/Containerfile against the build context (the repository root), without building it"
  "$py" tests/deploy/check_containerfile.py --context . deploy/Containerfile || status=1
fi

if [ "$step" != manifests ]; then
  echo "==> zfs-csi flags in deploy/base/node.yaml, run through $ZFS_CSI_BIN --print-config"
  "$py" tests/deploy/check_driver_args.py --binary "$ZFS_CSI_BIN" \
    deploy/base/node.yaml deploy/base/csidriver.yaml deploy/base/storageclasses.yaml || status=1
fi

if [ "$status" -eq 0 ]; then echo "==> deploy validation passed"; else echo "==> deploy validation FAILED"; fi
exit "$status"
