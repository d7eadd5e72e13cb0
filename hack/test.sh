#!/bin/bash
# The one test command: host unit tests, deploy manifest checks, then the integration and
# conformance suite against real OpenZFS inside the test VM (built and cached on first use),
# once per guest kernel.
# Env: KERNELS="bookworm bookworm-backports" (default: both; bookworm = 6.1, backports = 6.12+);
#      ZFS_SUITE=bookworm runs the VM suite on OpenZFS 2.1 instead of 2.3;
#      TEST_FILTER=name runs only the VM tests whose names contain it;
#      VM_ONLY=1 skips the host unit tests and deploy checks;
#      CRASH_ROUNDS (50) rounds of the crash-injection test on the first kernel,
#      CRASH_ROUNDS_OTHER (10) on the second.
# A failed VM run keeps its console and test logs in target/vm-logs/<kernel>/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
bash hack/check-prereqs.sh

if [ -z "${VM_ONLY:-}" ]; then
echo "== host: unit tests (tests that need real ZFS are #[ignore]d here; they run in the VM below)"
cargo build --quiet -p zfs-csi
cargo test --workspace --quiet

if [ -x hack/validate-deploy.sh ]; then
  echo "== deploy: manifests against the Kubernetes schemas, flags against the binary"
  ZFS_CSI_BIN=target/debug/zfs-csi bash hack/validate-deploy.sh
fi
fi

echo "== building the binary and the VM test binaries"
share=$(mktemp -d)
trap 'rm -rf "$share"' EXIT
mkdir -p "$share/bin" "$share/tests"
cargo build --quiet -p zfs-csi
cp target/debug/zfs-csi "$share/bin/"
cargo test --quiet -p zfs-csi-tests --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' |
  while read -r name exe; do cp "$exe" "$share/tests/$name"; done
echo "   test binaries: $(ls "$share/tests" | tr '\n' ' ')"
cp hack/vm/container-launch.sh deploy/base/node.yaml "$share/"

status=0
summary=()
for kernel in ${KERNELS:-bookworm bookworm-backports}; do
  echo "== VM: real OpenZFS (${ZFS_SUITE:-bookworm-backports}), guest kernel from $kernel"
  image=$(KERNEL_SUITE=$kernel bash hack/testvm-image.sh)
  rm -rf "$share/out" "$share/console.log"
  cp hack/vm/run-tests.sh "$share/run.sh"
  [ -z "${TEST_FILTER:-}" ] || sed -i "1a export TEST_FILTER='$TEST_FILTER'" "$share/run.sh"
  # The crash-injection test's 50 rounds take about 15 minutes under TCG; what it proves does
  # not depend on the kernel, so the first kernel runs all of them and the others a sample.
  rounds=${CRASH_ROUNDS:-50}; [ -z "${first_done:-}" ] || rounds=${CRASH_ROUNDS_OTHER:-10}; first_done=1
  sed -i "1a export CRASH_ROUNDS=$rounds" "$share/run.sh"
  set +e
  bash hack/run-vm.sh "$image" "$share"
  rc=$?
  set -e
  cat "$share/out/run.log" 2>/dev/null
  # What `zfs-csi import` printed for real datasets in the VM (tests/cli.rs), checked
  # offline against the Kubernetes schemas like the manifests under deploy/.
  if [ -d "$share/out/import" ]; then
    echo "== import output from the VM: $(ls "$share/out/import" | tr '\n' ' ')"
    bash hack/validate-deploy.sh import-output "$share/out/import" || rc=1
  fi
  echo "== VM suite on $kernel: exit code $rc"
  summary+=("kernel $kernel ($(cat "$image/kernel-version" 2>/dev/null)): exit code $rc")
  if [ "$rc" != 0 ]; then
    status=1
    keep=target/vm-logs/$kernel
    rm -rf "$keep"; mkdir -p "$keep"
    cp -r "$share/out/." "$share/console.log" "$keep/" 2>/dev/null || true
    echo "   logs kept in $keep"
  fi
done
echo "== summary"
printf '   %s\n' "${summary[@]}"
exit $status
