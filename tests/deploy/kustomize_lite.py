"""A small kustomize renderer for the tests: the subset that deploy/kubernetes
uses (resources, components, namespace, strategic-merge patches from files,
images), so the manifests can be checked where no kubectl/kustomize is
installed. Anything else in a kustomization raises, so an overlay that starts
using another feature fails loudly here; where kubectl is installed,
test_manifests.py checks that this renderer and `kubectl kustomize` agree.
"""

import copy
from pathlib import Path

import yaml

KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "resources", "components", "namespace", "patches",
    "images",
}

# Strategic-merge keys of the lists this project patches (from the Kubernetes
# API's patchMergeKey); other lists are replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}

CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "APIService",
}


class UnsupportedFeature(Exception):
    pass


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _strip_nulls(value):
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _ports_key(items):
    # Container ports merge on containerPort, Service ports on port.
    if items and isinstance(items[0], dict) and "containerPort" in items[0]:
        return "containerPort"
    return "port"


def strategic_merge(base, patch):
    """Merges `patch` into `base` in place (maps recursively, keyed lists by
    their merge key, null deletes a key, other values replace)."""
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise UnsupportedFeature(f"patch directive {key}")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            strategic_merge(base[key], value)
        elif (isinstance(value, list) and isinstance(base.get(key), list)
              and (key in MERGE_KEYS or key == "ports")):
            merge_key = MERGE_KEYS.get(key) or _ports_key(base[key] or value)
            merged = base[key]
            for item in value:
                match = next((m for m in merged
                              if m.get(merge_key) == item.get(merge_key)), None)
                if match is None:
                    merged.append(_strip_nulls(copy.deepcopy(item)))
                else:
                    strategic_merge(match, item)
        else:
            base[key] = _strip_nulls(copy.deepcopy(value))
    return base


def _apply_patch(resources, patch_doc, target):
    kind = (target or {}).get("kind", patch_doc.get("kind"))
    name = (target or {}).get("name", patch_doc.get("metadata", {}).get("name"))
    hits = [r for r in resources
            if r.get("kind") == kind and r["metadata"].get("name") == name]
    if len(hits) != 1:
        raise ValueError(f"patch target {kind}/{name}: {len(hits)} matches")
    body = copy.deepcopy(patch_doc)
    body.pop("apiVersion", None)
    body.pop("kind", None)
    strategic_merge(hits[0], body)


def _apply_images(resources, images):
    for res in resources:
        spec = res.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            image = container.get("image", "")
            name, tag = image, ""
            if ":" in image.rsplit("/", 1)[-1]:  # a tag, not a registry port
                name, _, tag = image.rpartition(":")
            for entry in images:
                if entry["name"] != name:
                    continue
                if "digest" in entry:
                    raise UnsupportedFeature("images[].digest")
                new_name = entry.get("newName", name)
                new_tag = entry.get("newTag", tag)
                container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def _transform(directory, k, resources):
    for entry in k.get("patches", []):
        if set(entry) - {"path", "target"}:
            raise UnsupportedFeature(f"patches entry keys {sorted(entry)}")
        for doc in load_all(directory / entry["path"]):
            _apply_patch(resources, doc, entry.get("target"))
    if k.get("images"):
        _apply_images(resources, k["images"])
    if k.get("namespace"):
        for res in resources:
            if res["kind"] not in CLUSTER_SCOPED:
                res["metadata"]["namespace"] = k["namespace"]


def _read_kustomization(directory):
    k = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise UnsupportedFeature(f"{directory}: {sorted(unknown)}")
    return k


def build(directory):
    """Renders the kustomization in `directory`; returns the resources."""
    directory = Path(directory)
    k = _read_kustomization(directory)
    if k.get("kind") == "Component":
        raise ValueError(f"{directory} is a Component, not a Kustomization")
    resources = []
    for entry in k.get("resources", []):
        path = directory / entry
        resources += build(path) if path.is_dir() else load_all(path)
    for entry in k.get("components", []):
        comp_dir = directory / entry
        comp = _read_kustomization(comp_dir)
        if comp.get("kind") != "Component":
            raise ValueError(f"{comp_dir} is not a Component")
        for res in comp.get("resources", []):
            resources += load_all(comp_dir / res)
        _transform(comp_dir, comp, resources)
    _transform(directory, k, resources)
    return resources
