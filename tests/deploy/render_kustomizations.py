#!/usr/bin/env python3
"""Build every kustomization under deploy/ with kustomize, and validate each build.

The builds, each run through `kubectl kustomize` as `kubectl apply -k` and Flux
run it:
  - every directory with a kind: Kustomization (deploy/, deploy/base, deploy/k0s,
    deploy/cdi, ...), as it is;
  - each of those that builds the driver's DaemonSet again with every combination
    of the components under deploy/components, added to its kustomization.yaml as
    Flux adds a Kustomization's spec.components;
  - each Flux Kustomization of deploy/flux that reads this repository, with its
    path and components.
Each build is validated like the sources (validate_manifests.py: schemas, strict,
and the cross-document checks, now within that build alone), then checked for
what only a build shows:
  - without components, the driver's build holds only built-in Kubernetes kinds,
    so it applies on a cluster without any CRDs;
  - the snapshots component adds csi-snapshotter and the VolumeSnapshotClass,
    and nothing else brings them; the snapshot-controller component runs with
    --enable-distributed-snapshotting and may read nodes;
  - csi-snapshotter, snapshot-controller and the external-snapshotter tag the Flux
    example installs the CRDs from are one version;
  - every --http-endpoint port has its containerPort, and no port is used twice;
  - no /var/lib/kubelet path is left in a k0s build;
  - deploy/cdi has a StorageProfile for every StorageClass the driver's build has.
Exits 1 if anything failed.
"""

import argparse
import itertools
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

import validate_manifests as vm

DAEMONSET = ("DaemonSet", "zfs-csi-node")
IMAGE_TAG = re.compile(r"^registry\.k8s\.io/sig-storage/(csi-snapshotter|snapshot-controller):(v[0-9.]+)$")


def kustomizations(deploy):
    """The Kustomization and Component directories under deploy/, relative to it."""
    builds, components = [], []
    for file in sorted(deploy.rglob("kustomization.yaml")):
        kind = vm.kind_of(yaml.safe_load(file.read_text()))
        rel = file.parent.relative_to(deploy)
        if kind == ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
            builds.append(rel)
        elif kind == ("kustomize.config.k8s.io/v1alpha1", "Component"):
            components.append(rel)
    return builds, components


def build(kubectl, deploy, path, components):
    """kubectl kustomize of deploy/<path>, with `components` (relative to path) added
    to its kustomization.yaml, in a copy of deploy/. Returns (documents, error)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "deploy"
        shutil.copytree(deploy, copy)
        target = copy / path
        if components:
            file = target / "kustomization.yaml"
            kustomization = yaml.safe_load(file.read_text())
            kustomization["components"] = kustomization.get("components", []) + list(components)
            file.write_text(yaml.safe_dump(kustomization, sort_keys=False))
        done = subprocess.run([kubectl, "kustomize", str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            return None, done.stderr.strip()
        return [d for d in yaml.safe_load_all(done.stdout) if d], None


def relative(from_dir, to_dir):
    return str(pathlib.Path(*[".."] * len(from_dir.parts), to_dir)) if from_dir.parts else str(to_dir)


def containers(docs):
    for doc in docs:
        if doc.get("kind") in ("DaemonSet", "Deployment"):
            for container in doc["spec"]["template"]["spec"].get("containers", []):
                yield doc, container


def image_tags(docs):
    tags = {}
    for _, container in containers(docs):
        match = IMAGE_TAG.match(container.get("image", ""))
        if match:
            tags[match.group(1)] = match.group(2)
    return tags


def build_checks(label, path, components, docs, flux_snapshotter_tag, report):
    problems = []
    kinds = {(d.get("apiVersion"), d.get("kind")) for d in docs}
    names = {(d.get("kind"), d["metadata"].get("name")) for d in docs}
    has_driver = DAEMONSET in names
    container_names = {c["name"] for _, c in containers(docs)}

    if has_driver and not components:
        custom = sorted(f"{k[1]} ({k[0]})" for k in kinds if k in vm.OWN_SCHEMAS)
        if custom:
            problems.append(f"kinds that need CRDs, in a build without components: {custom}")
    with_snapshots = any(pathlib.Path(c).name == "snapshots" for c in components)
    with_controller = any(pathlib.Path(c).name == "snapshot-controller" for c in components)
    if has_driver:
        for what, present in (("csi-snapshotter container", "csi-snapshotter" in container_names),
                              ("VolumeSnapshotClass", any(k[1] == "VolumeSnapshotClass" for k in kinds))):
            if present != with_snapshots:
                problems.append(f"{what} {'missing' if with_snapshots else 'present'} "
                                f"{'with' if with_snapshots else 'without'} the snapshots component")
    if with_controller:
        args = [a for d, c in containers(docs) if d["metadata"]["name"] == "snapshot-controller"
                for a in c.get("args", [])]
        if not any(a in ("--enable-distributed-snapshotting", "--enable-distributed-snapshotting=true") for a in args):
            problems.append("snapshot-controller runs without --enable-distributed-snapshotting")
        node_readers = {b["roleRef"]["name"] for b in docs if b.get("kind") == "ClusterRoleBinding"
                        and any(s.get("name") == "snapshot-controller" for s in b.get("subjects", []))}
        if not any(r.get("kind") == "ClusterRole" and r["metadata"]["name"] in node_readers
                   and any("nodes" in rule.get("resources", []) and "watch" in rule.get("verbs", [])
                           for rule in r.get("rules", []))
                   for r in docs):
            problems.append("snapshot-controller may not watch nodes, which distributed snapshotting needs")

    tags = image_tags(docs)
    if flux_snapshotter_tag and (with_snapshots or with_controller):
        tags["external-snapshotter (deploy/flux CRDs)"] = flux_snapshotter_tag
    if len(set(tags.values())) > 1:
        problems.append(f"external-snapshotter versions differ: {tags}")

    # The containers of a pod share its network namespace: a port is the pod's.
    for doc in docs:
        if doc.get("kind") in ("DaemonSet", "Deployment"):
            pod = doc["spec"]["template"]["spec"]["containers"]
            ports = [p["containerPort"] for c in pod for p in c.get("ports", [])]
            clashes = sorted({p for p in ports if ports.count(p) > 1})
            if clashes:
                problems.append(f"{doc['metadata']['name']}: ports declared twice in the pod: {clashes}")
            listening = [(c["name"], int(m.group(1))) for c in pod for a in c.get("args", [])
                         for m in [re.match(r"^--(?:http-endpoint|metrics-address)=[^:]*:([0-9]+)$", a)] if m]
            for name, port in listening:
                if port not in ports:
                    problems.append(f"{doc['metadata']['name']}/{name} listens on {port}, which no containerPort names")
            taken = [port for _, port in listening]
            clashes = sorted({p for p in taken if taken.count(p) > 1})
            if clashes:
                problems.append(f"{doc['metadata']['name']}: two containers listen on {clashes}")

    if "k0s" in path.parts and "/var/lib/kubelet" in yaml.safe_dump_all(docs):
        problems.append("a /var/lib/kubelet path is left in the k0s build")

    if problems:
        report.fail(label, "build checks", "; ".join(problems))
    else:
        report.ok(label, "build checks: components, versions, ports, kubelet paths")


def flux_builds(deploy):
    """(name, path, components, external-snapshotter tag) from deploy/flux."""
    docs = [d for f in sorted((deploy / "flux").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    tag = None
    for doc in docs:
        if doc.get("kind") == "GitRepository" and "external-snapshotter" in doc["spec"].get("url", ""):
            tag = (doc["spec"].get("ref") or {}).get("tag")
    builds = []
    for doc in docs:
        if vm.kind_of(doc) == vm.FLUX_KUSTOMIZATION and doc["spec"]["sourceRef"]["name"] == vm.OWN_FLUX_SOURCE:
            path = pathlib.Path(doc["spec"].get("path", ".")).relative_to("deploy")
            builds.append((doc["metadata"]["name"], path, doc["spec"].get("components", [])))
    return builds, tag


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--schemas", type=pathlib.Path, required=True)
    parser.add_argument("deploy", type=pathlib.Path)
    args = parser.parse_args()

    report = vm.Report()
    validators = vm.own_schema_validators(args.schemas)
    build_dirs, component_dirs = kustomizations(args.deploy)
    flux, flux_tag = flux_builds(args.deploy)

    plan = []
    for path in build_dirs:
        label = f"deploy/{path}".removesuffix("/.")
        plan.append((label, path, ()))
        docs, _ = build(args.kubectl, args.deploy, path, ())
        if docs and DAEMONSET in {(d.get("kind"), d["metadata"].get("name")) for d in docs}:
            for n in range(1, len(component_dirs) + 1):
                for chosen in itertools.combinations(component_dirs, n):
                    rel = tuple(relative(path, c) for c in chosen)
                    plan.append((f"{label} + {', '.join(str(c) for c in chosen)}", path, rel))
    plan += [(f"deploy/flux Kustomization {name} (path ./deploy/{path}, components {components})",
              path, tuple(components)) for name, path, components in flux]

    # A build that only adds to the driver's (StorageProfiles for its classes) is
    # cross-checked against the driver's build.
    driver, _ = build(args.kubectl, args.deploy, pathlib.Path("."), ())
    rendered = {}
    for label, path, components in plan:
        print(f"==> kustomize build {label}")
        docs, error = build(args.kubectl, args.deploy, path, components)
        if docs is None:
            report.fail(label, "kubectl kustomize", error)
            continue
        rendered[(path, components)] = docs
        entries = [(pathlib.Path(f"[{label}]"), i, d) for i, d in enumerate(docs)]
        vm.validate_schemas(entries, args.kubernetes_version, validators, report)
        has_driver = DAEMONSET in {(d.get("kind"), d["metadata"].get("name")) for d in docs}
        vm.cross_checks(entries, report, context=() if has_driver else driver or ())
        build_checks(label, path, components, docs, flux_tag, report)

    cdi = rendered.get((pathlib.Path("cdi"), ()))
    if driver is not None and cdi is not None:
        classes = {d["metadata"]["name"] for d in driver if d.get("kind") == "StorageClass"}
        profiles = {d["metadata"]["name"] for d in cdi if d.get("kind") == "StorageProfile"}
        if classes != profiles:
            report.fail("deploy/cdi", "a StorageProfile per StorageClass",
                        f"StorageClasses {sorted(classes)}, StorageProfiles {sorted(profiles)}")
        else:
            report.ok("deploy/cdi", f"a StorageProfile for each StorageClass of deploy/: {sorted(classes)}")

    print(f"builds: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
