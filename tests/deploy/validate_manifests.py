#!/usr/bin/env python3
"""Validate zfs-csi's Kubernetes manifests offline.

Each YAML document in the files given (directories are searched for *.yaml) is
checked, and the output names what checked it:
  - Kubernetes kinds: kubernetes-validate's schemas of the pinned Kubernetes
    version, strict (an unknown field is an error);
  - kinds from CRDs, kustomize and Flux (VolumeSnapshot, VolumeSnapshotClass,
    VirtualMachine, CDI's StorageProfile, DataVolume, DataSource and
    DataImportCron, kustomize's Kustomization and Component, Flux's GitRepository
    and Kustomization): our own JSON schemas in tests/deploy/schemas, closed with
    additionalProperties false;
  - a kind that neither knows is an error, never a skip;
  - a file that a kustomization names as a patch is a fragment, not an object:
    it is checked in the kustomize builds (render_kustomizations.py) instead.
Then cross-document checks that no schema sees: driver names, StorageClass
parameters and pools, references between objects, kustomization resources,
Flux sources, paths and dependencies.
Exits 1 if anything failed.
"""

import argparse
import json
import pathlib
import re
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
    ("cdi.kubevirt.io/v1beta1", "StorageProfile"): "storageprofile.json",
    ("cdi.kubevirt.io/v1beta1", "DataVolume"): "datavolume.json",
    ("cdi.kubevirt.io/v1beta1", "DataSource"): "datasource.json",
    ("cdi.kubevirt.io/v1beta1", "DataImportCron"): "dataimportcron.json",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "kustomization.json",
    ("kustomize.config.k8s.io/v1alpha1", "Component"): "component.json",
    ("source.toolkit.fluxcd.io/v1", "GitRepository"): "gitrepository.json",
    ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"): "flux-kustomization.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
}

KUSTOMIZE_KINDS = {
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
    ("kustomize.config.k8s.io/v1alpha1", "Component"),
}
FLUX_KUSTOMIZATION = ("kustomize.toolkit.fluxcd.io/v1", "Kustomization")

# The GitRepository that the Flux example (deploy/flux) names for this repository:
# the paths of the Flux Kustomizations reading it must exist here.
OWN_FLUX_SOURCE = "zfs-csi"

# The StorageClass parameters the driver understands (OpenEBS ZFS-LocalPV's names,
# docs/DESIGN.md section 5). The controller rejects any other key, so a typo here would
# only surface as a Pending PVC.
STORAGECLASS_PARAMETERS = {
    "poolname", "fstype", "recordsize", "volblocksize", "compression", "dedup",
    "thinprovision", "quotatype", "shared", "encryption", "keyformat", "keylocation",
}

# The keys the external-provisioner consumes itself (secret references, PVC metadata):
# it strips them before CreateVolume, so they are no driver parameters.
PROVISIONER_PREFIX = "csi.storage.k8s.io/"

# The VolumeAttributesClass parameters ControllerModifyVolume applies (driver/src/params.rs,
# MUTABLE_KEYS); any other key makes the PVC's modification Infeasible.
MUTABLE_PARAMETERS = {
    "compression", "recordsize", "atime", "dedup", "sync", "logbias", "primarycache",
    "secondarycache", "redundant_metadata", "special_small_blocks",
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


def kind_of(doc):
    return (doc.get("apiVersion"), doc.get("kind")) if isinstance(doc, dict) else None


def patch_files(files):
    """The files that kustomizations and components among `files` name as patches."""
    patches = set()
    for file in files:
        if file.name != "kustomization.yaml":
            continue
        try:
            doc = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError):
            continue  # load_documents reports it
        if kind_of(doc) in KUSTOMIZE_KINDS:
            for patch in doc.get("patches") or []:
                if isinstance(patch, dict) and "path" in patch:
                    patches.add((file.parent / patch["path"]).resolve())
    return patches


def load_documents(files, report):
    """Every non-empty document as (file, index, document), less kustomize patches."""
    patches = patch_files(files)
    docs = []
    for file in files:
        if file.resolve() in patches:
            print(f"  --    {file}  [a kustomize patch: checked in the builds]")
            continue
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


def repository_root(docs):
    """The repository that holds the manifests: the parent of their deploy/ directory."""
    for file, _, _ in docs:
        for parent in file.resolve().parents:
            if parent.name == "deploy":
                return parent.parent
    return None


def cross_checks(docs, report, context=()):
    """What no schema sees: names that must agree across documents. `context` holds more
    documents that references may name (another build's), which are not checked."""
    index = {}
    for doc in [d for _, _, d in docs] + list(context):
        if isinstance(doc, dict) and kind_of(doc) not in KUSTOMIZE_KINDS:
            index.setdefault(doc.get("kind"), {})[(doc.get("metadata") or {}).get("name")] = doc

    def named(kind):
        return index.get(kind, {})

    # A DataVolume's PVC has the DataVolume's name; a DataImportCron keeps its DataSource.
    claims = set(named("PersistentVolumeClaim")) | set(named("DataVolume"))
    data_sources = set(named("DataSource")) | {
        (d.get("spec") or {}).get("managedDataSource") for d in named("DataImportCron").values()}
    root = repository_root(docs)

    def check(what, how, problems):
        if problems:
            report.fail(what, how, "; ".join(problems))
        else:
            report.ok(what, how)

    def class_defined(spec):
        # "" is no class: a static PV and the claim bound to it by name (zfs-csi import).
        return spec.get("storageClassName") == "" or spec.get("storageClassName") in named("StorageClass")

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
            unknown = sorted(k for k in set(params) - STORAGECLASS_PARAMETERS if not k.startswith(PROVISIONER_PREFIX))
            if unknown:
                problems.append(f"parameters the driver does not know: {unknown}")
            pool = str(params.get("poolname", "")).split("/")[0]
            if not pool:
                problems.append("no poolname parameter")
            elif parents is not None and pool not in [p.split("/")[0] for p in parents]:
                problems.append(f"poolname {params['poolname']!r} is outside the driver's parents {parents}")
            check(what, "driver name, parameters, pool within --parents", problems)
        elif kind == "VolumeAttributesClass":
            if drivers and doc.get("driverName") not in drivers:
                problems.append(f"driverName {doc.get('driverName')!r} is not a CSIDriver here {sorted(drivers)}")
            unknown = sorted(set(doc.get("parameters") or {}) - MUTABLE_PARAMETERS)
            if unknown:
                problems.append(f"parameters ControllerModifyVolume refuses: {unknown}")
            check(what, "driver name, mutable parameters", problems)
        elif kind == "VolumeSnapshotClass":
            if drivers and doc.get("driver") not in drivers:
                problems.append(f"driver {doc.get('driver')!r} is not a CSIDriver here {sorted(drivers)}")
            params = doc.get("parameters") or {}
            unknown = sorted(k for k in params if k != "replicateTo" and not k.startswith("csi.storage.k8s.io/"))
            if unknown:
                problems.append(f"parameters the driver does not know: {unknown} (it takes replicateTo)")
            target = str(params.get("replicateTo", ""))
            if target and parents is not None and target.split("/")[0] not in [p.split("/")[0] for p in parents]:
                problems.append(f"replicateTo {target!r} is outside the driver's parents {parents}")
            check(what, "driver name, parameters, replicateTo within --parents", problems)
        elif kind == "PersistentVolume":
            csi = spec.get("csi") or {}
            if drivers and csi.get("driver") not in drivers:
                problems.append(f"csi.driver {csi.get('driver')!r} is not a CSIDriver here {sorted(drivers)}")
            if not class_defined(spec):
                problems.append(f"storageClassName {spec.get('storageClassName')!r} is not defined here")
            claim_ref = spec.get("claimRef")
            if claim_ref:
                claim = named("PersistentVolumeClaim").get(claim_ref.get("name"))
                claim_meta = (claim or {}).get("metadata") or {}
                claim_spec = (claim or {}).get("spec") or {}
                if claim is None:
                    problems.append(f"claimRef {claim_ref.get('name')!r} is not a PVC defined here")
                elif claim_meta.get("namespace", "default") != claim_ref.get("namespace", "default"):
                    problems.append(f"claimRef namespace {claim_ref.get('namespace')!r} is not its PVC's "
                                    f"{claim_meta.get('namespace')!r}")
                elif claim_spec.get("volumeName") not in (None, doc["metadata"]["name"]):
                    problems.append(f"its PVC {claim_ref.get('name')!r} names another volume "
                                    f"{claim_spec.get('volumeName')!r}")
                elif claim_spec.get("storageClassName") != spec.get("storageClassName"):
                    problems.append("its PVC has another storageClassName: the PV would not bind")
                elif claim_spec.get("volumeMode", "Filesystem") != spec.get("volumeMode", "Filesystem"):
                    problems.append("its PVC has another volumeMode: the PV would not bind")
            handle = csi.get("volumeHandle", "")
            if parents is not None and handle.split("/")[0] not in [p.split("/")[0] for p in parents]:
                problems.append(f"volumeHandle {handle!r} is outside the driver's parents {parents}")
            check(what, "driver name, class, volumeHandle within --parents, claimRef and its PVC agree", problems)
        elif kind == "PersistentVolumeClaim":
            if not class_defined(spec):
                problems.append(f"storageClassName {spec.get('storageClassName')!r} is not defined here")
            source = spec.get("dataSource")
            if source and source.get("name") not in named(source.get("kind")):
                problems.append(f"dataSource {source.get('kind')} {source.get('name')!r} is not defined here")
            if spec.get("volumeName") and spec["volumeName"] not in named("PersistentVolume"):
                problems.append(f"volumeName {spec['volumeName']!r} is not defined here")
            vac = spec.get("volumeAttributesClassName")
            if vac and vac not in named("VolumeAttributesClass"):
                problems.append(f"volumeAttributesClassName {vac!r} is not defined here")
            check(what, "class, data source and volume exist", problems)
        elif kind == "VolumeSnapshot":
            cls = spec.get("volumeSnapshotClassName")
            if cls and cls not in named("VolumeSnapshotClass"):
                problems.append(f"volumeSnapshotClassName {cls!r} is not defined here")
            pvc = (spec.get("source") or {}).get("persistentVolumeClaimName")
            if pvc and pvc not in claims:
                problems.append(f"source PVC {pvc!r} is not defined here")
            check(what, "class and source exist", problems)
        elif kind in ("Pod", "DaemonSet", "Deployment"):
            pod = spec if kind == "Pod" else spec.get("template", {}).get("spec", {})
            sa = pod.get("serviceAccountName")
            if sa and sa not in named("ServiceAccount"):
                problems.append(f"serviceAccountName {sa!r} is not defined here")
            for volume in pod.get("volumes", []):
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and claim not in claims:
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
            templates = {(t.get("metadata") or {}).get("name"): t for t in spec.get("dataVolumeTemplates", [])}
            for volume in volumes.values():
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and claim not in claims:
                    problems.append(f"volume {volume.get('name')!r}: PVC {claim!r} is not defined here")
                data_volume = (volume.get("dataVolume") or {}).get("name")
                if data_volume and data_volume not in templates and data_volume not in named("DataVolume"):
                    problems.append(f"volume {volume.get('name')!r}: DataVolume {data_volume!r} is neither a "
                                    "dataVolumeTemplate nor defined here")
            for name, template in templates.items():
                problems.extend(f"dataVolumeTemplate {name!r}: {p}"
                                for p in data_volume_problems(template.get("spec") or {}, named, data_sources))
            check(what, "disks match volumes, interfaces match networks, PVCs and DataVolumes exist", problems)
        elif kind == "StorageProfile":
            if doc["metadata"]["name"] not in named("StorageClass"):
                problems.append(f"no StorageClass {doc['metadata']['name']!r}: a StorageProfile is named after its class")
            check(what, "its StorageClass exists", problems)
        elif kind == "DataVolume":
            check(what, "class and source exist", data_volume_problems(spec, named, data_sources))
        elif kind == "DataImportCron":
            problems = data_volume_problems((spec.get("template") or {}).get("spec") or {}, named, data_sources)
            check(what, "class exists", problems)
        elif kind == "DataSource":
            pvc = (spec.get("source") or {}).get("pvc")
            if pvc and pvc.get("name") not in claims:
                problems.append(f"source PVC {pvc.get('name')!r} is neither a PVC nor a DataVolume here")
            check(what, "source exists", problems)
        elif kind == "PrometheusRule":
            for group in spec.get("groups", []):
                for rule in group.get("rules", []):
                    problems.extend(f"alert {rule.get('alert')}: {p}" for p in metric_problems(rule.get("expr", ""), root))
            check(what, "every alert reads metrics that zfs-csi or the sidecars export", problems)
        elif kind_of(doc) in KUSTOMIZE_KINDS:
            for generator in doc.get("configMapGenerator", []):
                for entry in generator.get("files", []):
                    source = file.parent / entry.split("=", 1)[-1]
                    if source.suffix == ".json" and source.is_file():
                        problems.extend(f"{source.name}: {p}" for p in dashboard_problems(source, root))
            check(what, "resources, components, patches and generated files exist, every manifest beside it "
                  "listed, dashboards read exported metrics",
                  kustomization_problems(file, doc) + problems)
        elif kind_of(doc) == FLUX_KUSTOMIZATION:
            source = spec.get("sourceRef") or {}
            if source.get("name") not in named(source.get("kind")):
                problems.append(f"sourceRef {source.get('kind')} {source.get('name')!r} is not defined here")
            flux = {n for n, d in named("Kustomization").items() if kind_of(d) == FLUX_KUSTOMIZATION}
            for dependency in spec.get("dependsOn", []):
                if dependency.get("name") not in flux:
                    problems.append(f"dependsOn {dependency.get('name')!r}: no Flux Kustomization of that name here")
            if source.get("name") == OWN_FLUX_SOURCE and root is not None:
                path = root / spec.get("path", ".")
                if not (path / "kustomization.yaml").is_file():
                    problems.append(f"path {spec.get('path')!r} has no kustomization.yaml in this repository")
                for component in spec.get("components", []):
                    if not (path / component / "kustomization.yaml").is_file():
                        problems.append(f"component {component!r} (relative to path) does not exist")
            check(what, "source and dependencies exist; path and components exist in this repository", problems)


def data_volume_problems(spec, named, data_sources):
    """What a DataVolume spec (or template) refers to that is not defined."""
    problems = []
    cls = (spec.get("storage") or {}).get("storageClassName")
    if cls and cls not in named("StorageClass"):
        problems.append(f"storageClassName {cls!r} is not defined here")
    ref = spec.get("sourceRef")
    if ref and ref.get("name") not in data_sources:
        problems.append(f"sourceRef DataSource {ref.get('name')!r} is not defined here (nor managed by a DataImportCron)")
    return problems


# Metrics the kubernetes-csi sidecars export (csi-lib-utils), which alerts and dashboards
# may read beside the driver's own.
SIDECAR_METRICS = {"csi_sidecar_operations_seconds"}
METRIC_NAME = re.compile(r"\b((?:zfs_csi|csi_plugin|csi_sidecar|process)_[a-z_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported_metrics(root):
    """The metric names driver/src/metrics.rs writes (string literals naming a metric)."""
    source = (root / "driver/src/metrics.rs").read_text()
    return set(re.findall(r'"((?:zfs_csi|csi_plugin|process)_[a-z_]+)', source)) | SIDECAR_METRICS


def metric_problems(expr, root):
    """Metric names in a PromQL expression that nothing exports."""
    if root is None:
        return []
    known = exported_metrics(root)
    problems = []
    for name in sorted(set(METRIC_NAME.findall(expr))):
        base = next((name[:-len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s) and name[:-len(s)] in known), name)
        if base not in known:
            problems.append(f"{name} is not exported by zfs-csi (driver/src/metrics.rs) or the sidecars")
    return problems


def dashboard_problems(path, root):
    """A Grafana dashboard: valid JSON, panels with queries, every query reading exported metrics."""
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return [f"not JSON: {e}"]
    panels = dashboard.get("panels") or []
    if not panels:
        return ["no panels"]
    problems = []
    for panel in panels:
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel {panel.get('title')!r} has no query")
        for target in targets:
            problems.extend(f"panel {panel.get('title')!r}: {p}" for p in metric_problems(target.get("expr", ""), root))
    return problems


def kustomization_problems(file, doc):
    base = file.parent
    problems = []
    patches = [p["path"] for p in doc.get("patches", []) if "path" in p]
    generated = [entry.split("=", 1)[-1] for g in doc.get("configMapGenerator", []) for entry in g.get("files", [])]
    for entry in doc.get("resources", []) + patches + generated:
        if not (base / entry).exists():
            problems.append(f"{entry!r} does not exist")
    for component in doc.get("components", []):
        target = base / component / "kustomization.yaml"
        loaded = yaml.safe_load(target.read_text()) if target.is_file() else None
        if kind_of(loaded) != ("kustomize.config.k8s.io/v1alpha1", "Component"):
            problems.append(f"component {component!r} is not a directory with a kind: Component kustomization")
    listed = {(base / entry).resolve() for entry in doc.get("resources", []) + patches}
    for manifest in sorted(base.glob("*.yaml")):
        if manifest.name != "kustomization.yaml" and manifest.resolve() not in listed:
            problems.append(f"{manifest.name} is beside it but neither a resource nor a patch")
    return problems


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
