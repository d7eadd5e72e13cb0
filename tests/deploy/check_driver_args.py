#!/usr/bin/env python3
"""Check that the DaemonSet starts zfs-csi with flags the real binary accepts.

Takes the zfs-csi container's args and env from the DaemonSet, resolves the
downward-API env to sample values and expands Kubernetes' $(VAR) references as
kubelet would, then runs `zfs-csi <args> --print-config` with exactly that
environment and asserts: exit 0, and a printed configuration with the parents
the StorageClasses need, the CSIDriver's name, the node name, and an endpoint
the sidecars' --csi-address points at. Negative checks: an unknown flag, a
missing required setting, and a misspelled LOG_LEVEL must each exit non-zero (the
last naming the variable). The container's PATH must reach zfs on every host
distribution deploy/README.md names, since nsenter looks zfs up with it.
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys

import yaml

DRIVER_CONTAINER = "zfs-csi"

# What kubelet would put in a fieldRef env var, for a pod on node zfs-node-1.
SAMPLE_FIELDS = {
    "spec.nodeName": "zfs-node-1",
    "metadata.name": "zfs-csi-node-x7k2p",
    "metadata.namespace": "zfs-csi",
}

# Where hosts keep zfs (and the image its tools): nsenter execs with the container's PATH.
PATH_DIRS = {
    "/usr/sbin": "Debian, Ubuntu (zfsutils-linux)",
    "/sbin": "hosts whose /sbin is not merged into /usr",
    "/usr/local/sbin": "Talos (the ZFS system extension)",
    "/run/current-system/sw/bin": "NixOS",
    "/usr/bin": "the image's nsenter, blkid, mkfs.*",
    "/bin": "the image",
}

REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text, env):
    """Kubernetes' $(VAR) expansion: $$ escapes, unknown references stay as written."""
    def replace(match):
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return REFERENCE.sub(replace, text)


def container_environment(container):
    env = {}
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = expand(entry["value"], env)
        elif "fieldRef" in entry.get("valueFrom", {}):
            field = entry["valueFrom"]["fieldRef"]["fieldPath"]
            if field not in SAMPLE_FIELDS:
                raise SystemExit(f"env {name}: no sample value for fieldRef {field}: add one to SAMPLE_FIELDS")
            env[name] = SAMPLE_FIELDS[field]
        else:
            raise SystemExit(f"env {name}: unsupported source {entry.get('valueFrom')}: teach this check about it")
    return env


def load(paths):
    docs = []
    for path in paths:
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def normalise(key):
    return re.sub(r"[^a-z0-9]", "", key.lower())


def find(config, key):
    """A value from the printed configuration by key, whatever its case or separators."""
    for name, value in config.items():
        if normalise(name) == key:
            return value
        if isinstance(value, dict):
            found = find(value, key)
            if found is not None:
                return found
    return None


def as_list(value):
    if isinstance(value, str):
        return [p for p in value.split(",") if p]
    return [str(p) for p in value or []]


def as_endpoint(value):
    """The endpoint as a URL, whether printed as one or as {"unix": "/path"}."""
    if isinstance(value, dict) and len(value) == 1:
        (scheme, address), = value.items()
        return f"{scheme}://{address}"
    return value


def first_line(text):
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def run(binary, args, env, note=""):
    print(f"  $ {binary} {' '.join(args)}{note}")
    try:
        return subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"FAIL: cannot run {binary}: {e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True, type=pathlib.Path)
    parser.add_argument("manifests", nargs="+", type=pathlib.Path,
                        help="files holding the DaemonSet, the CSIDriver and the StorageClasses")
    args = parser.parse_args()

    if not (args.binary.is_file() and os.access(args.binary, os.X_OK)):
        print(f"FAIL: no zfs-csi binary at {args.binary}: build it first (cargo build), "
              "or point ZFS_CSI_BIN at one")
        return 1

    docs = load(args.manifests)
    daemonsets = [d for d in docs if d.get("kind") == "DaemonSet"]
    containers = [c for d in daemonsets for c in d["spec"]["template"]["spec"]["containers"]]
    driver = next((c for c in containers if c["name"] == DRIVER_CONTAINER), None)
    if driver is None:
        print(f"FAIL: no container named {DRIVER_CONTAINER} in a DaemonSet of {args.manifests}")
        return 1
    driver_names = [d["metadata"]["name"] for d in docs if d.get("kind") == "CSIDriver"]
    pools = sorted({d["parameters"]["poolname"].split("/")[0]
                    for d in docs if d.get("kind") == "StorageClass"})
    socket_paths = sorted({a.split("=", 1)[1] for c in containers if c is not driver
                           for a in c.get("args", []) if a.startswith("--csi-address=")})

    env = container_environment(driver)
    if "command" in driver:
        print(f"FAIL: the {DRIVER_CONTAINER} container overrides the image's entrypoint; "
              "this check only knows args")
        return 1
    flags = [expand(a, env) for a in driver.get("args", [])]
    unresolved = [f for f in flags if REFERENCE.search(f)]
    if unresolved:
        print(f"FAIL: args reference variables the container does not define: {unresolved}")
        return 1
    # Only the container's own environment: nothing from this shell can fill a gap.
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    print(f"  env: {' '.join(f'{k}={v!r}' for k, v in env.items())}")

    passed, failed = 0, 0

    def verdict(ok, text):
        nonlocal passed, failed
        passed += ok
        failed += not ok
        print(f"  {'ok  ' if ok else 'FAIL'}  {text}")

    result = run(args.binary, [*flags, "--print-config"], {**base_env, **env})
    verdict(result.returncode == 0,
            f"the DaemonSet's flags are accepted (exit {result.returncode})"
            + ("" if result.returncode == 0 else f": {first_line(result.stderr)}"))
    if result.returncode == 0:
        try:
            config = json.loads(result.stdout)
            print("  printed: " + json.dumps(config, sort_keys=True))
        except json.JSONDecodeError as e:
            config = None
            verdict(False, f"--print-config printed JSON ({e}): {result.stdout[:200]!r}")
        if isinstance(config, dict):
            parents = as_list(find(config, "parents"))
            roots = {p.split("/")[0] for p in parents}
            configured = as_list(env.get("ZFS_CSI_PARENTS", ""))
            verdict(bool(parents) and (not configured or parents == configured) and set(pools) <= roots,
                    f"parents {parents} are the manifest's {configured} and cover the StorageClasses' pools {pools}")
            name = find(config, "drivername")
            verdict(name in driver_names and name == "zfs-csi.io",
                    f"driver name {name!r} is the CSIDriver's {driver_names}")
            node = find(config, "nodeid")
            verdict(node == SAMPLE_FIELDS["spec.nodeName"],
                    f"node id {node!r} is the pod's node name {SAMPLE_FIELDS['spec.nodeName']!r}")
            endpoint = as_endpoint(find(config, "endpoint"))
            verdict(bool(socket_paths) and all(endpoint == f"unix://{p}" for p in socket_paths),
                    f"endpoint {endpoint!r} is the socket every sidecar uses {socket_paths}")

    result = run(args.binary, [*flags, "--no-such-flag", "--print-config"], {**base_env, **env})
    verdict(result.returncode != 0,
            f"an unknown flag is refused (exit {result.returncode}: {first_line(result.stderr)})")

    path = env.get("PATH", "").split(":")
    missing = {d: why for d, why in PATH_DIRS.items() if d not in path}
    verdict(not missing, f"PATH {env.get('PATH')!r} holds every place zfs lives"
            + ("" if not missing else f"; missing: {missing}"))

    result = run(args.binary, [*flags, "--print-config"], {**base_env, **env, "LOG_LEVEL": "debg"},
                 "   (env LOG_LEVEL=debg)")
    verdict(result.returncode != 0 and "LOG_LEVEL=debg" in result.stderr,
            f"a misspelled LOG_LEVEL is refused, naming the variable (exit {result.returncode}: "
            f"{first_line(result.stderr)})")

    without = {k: v for k, v in env.items() if k != "ZFS_CSI_PARENTS"}
    flags_without = [f for i, f in enumerate(flags)
                     if not f.startswith("--parents=") and f != "--parents"
                     and not (i > 0 and flags[i - 1] == "--parents")]
    result = run(args.binary, [*flags_without, "--print-config"], {**base_env, **without},
                 "   (env without ZFS_CSI_PARENTS)")
    verdict(result.returncode != 0,
            f"no parents is refused (exit {result.returncode}: {first_line(result.stderr)})")

    print(f"flags: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
