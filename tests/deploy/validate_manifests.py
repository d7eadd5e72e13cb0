#!/usr/bin/env python3
"""Validate zfs-csi's Kubernetes manifests offline.

Each YAML document in the files given (directories are searched for *.yaml) is
checked, and the output names what checked it:
  - Kubernetes kinds: kubernetes-validate's schemas of the pinned Kubernetes
    version, strict (an unknown field is an error);
  - kinds from CRDs and kustomize (VolumeSnapshot, VolumeSnapshotClass,
    VirtualMachine, Kustomization): our own JSON schemas in tests/deploy/schemas,
    closed with additionalProperties false;
  - a kind that neither knows is an error, never a skip.
Then cross-document checks that no schema sees: driver names, StorageClass
parameters and pools, references between objects, kustomization resources.
Exits 1 if anything failed.
"""

import argparse
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import referencing
import yaml

# Our schemas, by (apiVersion, kind).
OWN_SCHEMAS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"): "volumesnapshot.json",
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): "volumesnapshotclass.json",
    ("kubevirt.io/v1", "VirtualMachine"): "virtualmachine.json",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "kustomization.json",
}

# The StorageClass parameters the driver understands (OpenEBS ZFS-LocalPV's names,
# docs/DESIGN.md section 5). The controller rejects any other key, so a typo here would
# only surface as a Pending PVC.
STORAGECLASS_PARAMETERS = {
    "poolname", "fstype", "recordsize", "volblocksize", "compression", "dedup",
    "thinprovision", "quotatype", "shared", "encryption", "keyformat", "keylocation",
}

DRIVER_CONTAINER = "zfs-csi"


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys (kubectl refuses them too)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, what, how):
        self.passed += 1
        print(f"  ok    {what}  [{how}]")

    def fail(self, what, how, why):
        self.failed += 1
        print(f"  FAIL  {what}  [{how}]\n        {why}")


def yaml_files(paths):
    for path in paths:
        if path.is_dir():
            yield from sorted(path.rglob("*.yaml"))
        else:
            yield path


def load_documents(files, report):
    """Every non-empty document as (file, index, document)."""
    docs = []
    for file in files:
        try:
            loaded = list(yaml.load_all(file.read_text(), Loader=UniqueKeyLoader))
        except (OSError, yaml.YAMLError) as e:
            report.fail(str(file), "YAML", str(e).replace("\n", " "))
            continue
        for index, doc in enumerate(d for d in loaded if d is not None):
            docs.append((file, index, doc))
    return docs


def describe(file, doc):
    if not isinstance(doc, dict):
        return f"{file}: (not a mapping)"
    meta = doc.get("metadata") or {}
    name = meta.get("name", "") if isinstance(meta, dict) else ""
    ns = meta.get("namespace") if isinstance(meta, dict) else None
    return f"{file}: {doc.get('kind', '?')} {ns + '/' if ns else ''}{name}".rstrip()


def own_schema_validators(schema_dir):
    resources = []
    for path in sorted(schema_dir.glob("*.json")):
        contents = json.loads(path.read_text())
        resources.append((contents["$id"], referencing.Resource.from_contents(contents)))
    registry = referencing.Registry().with_resources(resources)
    validators = {}
    for key, name in OWN_SCHEMAS.items():
        schema = registry.contents(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        validators[key] = (jsonschema.Draft202012Validator(schema, registry=registry),
                           f"own schema {schema_dir / name}")
    return validators


def validate_schemas(docs, k8s_version, validators, report):
    for file, _, doc in docs:
        what = describe(file, doc)
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            report.fail(what, "structure", "a manifest needs apiVersion and kind")
            continue
        own = validators.get((doc["apiVersion"], doc["kind"]))
        if own:
            validator, how = own
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            if errors:
                report.fail(what, how, "; ".join(
                    f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors))
            else:
                report.ok(what, how)
            continue
        how = f"Kubernetes {k8s_version} schema, strict"
        try:
            kubernetes_validate.validate(doc, k8s_version, strict=True)
            report.ok(what, how)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            report.fail(what, how, f"{path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            report.fail(what, "no schema", f"{e.message}: add one under tests/deploy/schemas")


def driver_container(doc):
    if doc.get("kind") != "DaemonSet":
        return None
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("containers", []):
        if container.get("name") == DRIVER_CONTAINER:
            return container
    return None


def configured_parents(container):
    """The --parents the manifest gives the driver, by flag or by env."""
    for arg in container.get("args", []):
        if arg.startswith("--parents="):
            return arg.split("=", 1)[1].split(",")
    for env in container.get("env", []):
        if env.get("name") == "ZFS_CSI_PARENTS" and "value" in env:
            return env["value"].split(",")
    return None


def cross_checks(docs, report):
    """What no schema sees: names that must agree across documents."""
    index = {}
    for _, _, doc in docs:
        if isinstance(doc, dict):
            index.setdefault(doc.get("kind"), {})[doc.get("metadata", {}).get("name")] = doc

    def named(kind):
        return index.get(kind, {})

    def check(what, how, problems):
        if problems:
            report.fail(what, how, "; ".join(problems))
        else:
            report.ok(what, how)

    drivers = set(named("CSIDriver"))
    parents = None
    for _, _, doc in docs:
        container = isinstance(doc, dict) and driver_container(doc)
        if container:
            parents = configured_parents(container)

    for file, _, doc in docs:
        if not isinstance(doc, dict):
            continue
        kind, spec, what = doc.get("kind"), doc.get("spec") or {}, describe(file, doc)
        problems = []
        if kind == "StorageClass":
            if drivers and doc.get("provisioner") not in drivers:
                problems.append(f"provisioner {doc.get('provisioner')!r} is not a CSIDriver here {sorted(drivers)}")
            params = doc.get("parameters") or {}
            unknown = sorted(set(params) - STORAGECLASS_PARAMETERS)
            if unknown:
                problems.append(f"parameters the driver does not know: {unknown}")
            pool = str(params.get("poolname", "")).split("/")[0]
            if not pool:
                problems.append("no poolname parameter")
            elif parents is not None and pool not in [p.split("/")[0] for p in parents]:
                problems.append(f"poolname {params['poolname']!r} is outside the driver's parents {parents}")
            check(what, "driver name, parameters, pool within --parents", problems)
        elif kind == "VolumeSnapshotClass":
            if drivers and doc.get("driver") not in drivers:
                problems.append(f"driver {doc.get('driver')!r} is not a CSIDriver here {sorted(drivers)}")
            check(what, "driver name", problems)
        elif kind == "PersistentVolume":
            csi = spec.get("csi") or {}
            if drivers and csi.get("driver") not in drivers:
                problems.append(f"csi.driver {csi.get('driver')!r} is not a CSIDriver here {sorted(drivers)}")
            if spec.get("storageClassName") not in named("StorageClass"):
                problems.append(f"storageClassName {spec.get('storageClassName')!r} is not defined here")
            handle = csi.get("volumeHandle", "")
            if parents is not None and handle.split("/")[0] not in [p.split("/")[0] for p in parents]:
                problems.append(f"volumeHandle {handle!r} is outside the driver's parents {parents}")
            check(what, "driver name, class, volumeHandle within --parents", problems)
        elif kind == "PersistentVolumeClaim":
            if spec.get("storageClassName") not in named("StorageClass"):
                problems.append(f"storageClassName {spec.get('storageClassName')!r} is not defined here")
            source = spec.get("dataSource")
            if source and source.get("name") not in named(source.get("kind")):
                problems.append(f"dataSource {source.get('kind')} {source.get('name')!r} is not defined here")
            if spec.get("volumeName") and spec["volumeName"] not in named("PersistentVolume"):
                problems.append(f"volumeName {spec['volumeName']!r} is not defined here")
            check(what, "class, data source and volume exist", problems)
        elif kind == "VolumeSnapshot":
            cls = spec.get("volumeSnapshotClassName")
            if cls and cls not in named("VolumeSnapshotClass"):
                problems.append(f"volumeSnapshotClassName {cls!r} is not defined here")
            pvc = (spec.get("source") or {}).get("persistentVolumeClaimName")
            if pvc and pvc not in named("PersistentVolumeClaim"):
                problems.append(f"source PVC {pvc!r} is not defined here")
            check(what, "class and source exist", problems)
        elif kind in ("Pod", "DaemonSet"):
            pod = spec if kind == "Pod" else spec.get("template", {}).get("spec", {})
            sa = pod.get("serviceAccountName")
            if sa and sa not in named("ServiceAccount"):
                problems.append(f"serviceAccountName {sa!r} is not defined here")
            for volume in pod.get("volumes", []):
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and claim not in named("PersistentVolumeClaim"):
                    problems.append(f"volume {volume.get('name')!r}: PVC {claim!r} is not defined here")
            check(what, "service account and PVCs exist", problems)
        elif kind in ("RoleBinding", "ClusterRoleBinding"):
            role = doc.get("roleRef") or {}
            if role.get("name") not in named(role.get("kind")):
                problems.append(f"roleRef {role.get('kind')} {role.get('name')!r} is not defined here")
            for subject in doc.get("subjects", []):
                # A subject in a namespace we don't create (kube-system) belongs to something else.
                if (subject.get("kind") == "ServiceAccount" and subject.get("namespace") in named("Namespace")
                        and subject.get("name") not in named("ServiceAccount")):
                    problems.append(f"subject ServiceAccount {subject.get('name')!r} is not defined here")
            check(what, "role and subjects (in our namespaces) exist", problems)
        elif kind == "VirtualMachine":
            vmi = spec.get("template", {}).get("spec", {})
            devices = vmi.get("domain", {}).get("devices", {})
            volumes = {v.get("name"): v for v in vmi.get("volumes", [])}
            networks = {n.get("name") for n in vmi.get("networks", [])}
            for disk in devices.get("disks", []):
                if disk.get("name") not in volumes:
                    problems.append(f"disk {disk.get('name')!r} has no volume of that name")
            for iface in devices.get("interfaces", []):
                if iface.get("name") not in networks:
                    problems.append(f"interface {iface.get('name')!r} has no network of that name")
            for volume in volumes.values():
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and claim not in named("PersistentVolumeClaim"):
                    problems.append(f"volume {volume.get('name')!r}: PVC {claim!r} is not defined here")
            check(what, "disks match volumes, interfaces match networks, PVCs exist", problems)
        elif kind == "Kustomization":
            base = file.parent
            for resource in doc.get("resources", []):
                if not (base / resource).exists():
                    problems.append(f"resource {resource!r} does not exist")
            listed = {(base / r).resolve() for r in doc.get("resources", [])}
            for manifest in sorted(base.glob("*.yaml")):
                if manifest.name != "kustomization.yaml" and manifest.resolve() not in listed:
                    problems.append(f"{manifest.name} is beside it but not in resources")
            check(what, "resources exist, every manifest beside it listed", problems)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--schemas", type=pathlib.Path, required=True)
    parser.add_argument("--no-cross-checks", action="store_true",
                        help="schemas only (for a rendered kustomize build, already cross-checked as sources)")
    parser.add_argument("paths", nargs="+", type=pathlib.Path)
    args = parser.parse_args()

    report = Report()
    docs = load_documents(list(yaml_files(args.paths)), report)
    validate_schemas(docs, args.kubernetes_version, own_schema_validators(args.schemas), report)
    if not args.no_cross_checks:
        print("cross-document checks:")
        cross_checks(docs, report)
    print(f"manifests: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
