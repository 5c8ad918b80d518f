"""Regenerate the compact KubeRay schemas in this folder from KubeRay's CRDs (run by hand when the
KubeRay version we write for changes; the tests only read the JSON files).

    python tests/submit/schemas/make_schemas.py KUBERAY_CHECKOUT [COMMIT]

It reads ray-operator/config/crd/bases/ray.io_{rayjobs,rayclusters}.yaml, takes the `v1` version's
openAPIV3Schema, keeps the whole RayJob/RayCluster part but cuts Kubernetes' own PodSpec and
Container down to the fields our manifests use or users commonly add (the full CRDs are ~1 MB each),
and makes every object with declared properties strict (`additionalProperties: false`), so a
misspelt or invented field fails validation instead of being pruned silently by the API server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

POD_SPEC = {"containers", "volumes", "shareProcessNamespace", "nodeSelector", "tolerations", "serviceAccountName",
            "restartPolicy", "securityContext", "imagePullSecrets", "affinity"}
CONTAINER = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "resources", "ports",
             "volumeMounts", "securityContext", "workingDir", "lifecycle"}
VOLUME = {"name", "persistentVolumeClaim", "emptyDir", "secret", "configMap"}
# kept, but as opaque objects: Kubernetes' own types we do not write (the API server checks them)
DEEP_LIMIT = ("affinity", "lifecycle", "securityContext", "tolerations", "headService", "autoscalerOptions",
              "networkPolicy", "historyServerOptions", "valueFrom", "envFrom", "secret", "configMap")


def cut(schema: dict, keep: set[str]) -> dict:
    schema = dict(schema)
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k in keep}
    schema["required"] = [k for k in schema.get("required", []) if k in keep]
    if not schema["required"]:
        del schema["required"]
    return schema


def compact(schema: dict, path: tuple[str, ...] = ()) -> dict:
    """Walk the schema: cut pod specs and containers, make declared objects strict."""
    if not isinstance(schema, dict):
        return schema
    result = {k: v for k, v in schema.items() if k not in ("description",)}
    if path[-1:] == ("spec",) and path[-2:-1] in (("template",), ("submitterPodTemplate",)):
        result = cut(result, POD_SPEC)
    if path[-2:] == ("containers", "items"):
        result = cut(result, CONTAINER)
    if path[-2:] == ("volumes", "items"):
        result = cut(result, VOLUME)
    if "properties" in result:
        properties = {}
        for key, value in result["properties"].items():
            if key in DEEP_LIMIT and "properties" in value and path[-1:] != ("rayClusterSpec",):
                properties[key] = {"type": "object"}
            else:
                properties[key] = compact(value, (*path, key))
        result["properties"] = properties
        if result.get("type") == "object" and "additionalProperties" not in result and path[-1:] != ("metadata",):
            result["additionalProperties"] = False
    if "items" in result:
        result["items"] = compact(result["items"], (*path, "items"))
    if isinstance(result.get("additionalProperties"), dict):
        result["additionalProperties"] = compact(result["additionalProperties"], (*path, "*"))
    return result


def main(checkout: str, commit: str = "unknown") -> None:
    here = Path(__file__).resolve().parent
    for plural, kind in (("rayjobs", "RayJob"), ("rayclusters", "RayCluster")):
        crd = yaml.safe_load((Path(checkout) / f"ray-operator/config/crd/bases/ray.io_{plural}.yaml").read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = compact(version["schema"]["openAPIV3Schema"])
        schema["properties"].pop("status", None)
        schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
        schema["properties"]["kind"] = {"const": kind}
        schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
        schema["properties"]["metadata"] = {"type": "object", "required": ["name"],
                                            "properties": {"name": {"type": "string"}}}
        schema["$comment"] = f"compact subset of KubeRay's {kind} CRD (ray.io/v1) at commit {commit}; make_schemas.py"
        (here / f"{plural}.v1.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
