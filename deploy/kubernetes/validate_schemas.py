#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests against the Kubernetes JSON schemas, offline.

Usage: validate_schemas.py --k8s-version 1.30.0 [--k8s-version ...] FILE.yaml...

Uses the schemas that the kubernetes-validate package ships (strict mode: unknown fields are
errors). Every object must have a schema, except the custom resources listed in CRD_CHECKS,
which get a structural check instead (their CRDs are not part of Kubernetes) and a printed
note. Exit status: 0 when every object passed, 1 otherwise.
"""
import argparse
import sys

import kubernetes_validate
import yaml


def check_servicemonitor(obj):
    """Structural check of a monitoring.coreos.com/v1 ServiceMonitor (Prometheus Operator)."""
    errors = []
    spec = obj.get("spec") or {}
    if not obj.get("metadata", {}).get("name"):
        errors.append("metadata.name missing")
    sel = spec.get("selector")
    if not isinstance(sel, dict) or not (sel.get("matchLabels") or sel.get("matchExpressions")):
        errors.append("spec.selector.matchLabels/matchExpressions missing")
    eps = spec.get("endpoints")
    if not isinstance(eps, list) or not eps:
        errors.append("spec.endpoints must be a non-empty list")
    else:
        allowed = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                   "relabelings", "metricRelabelings", "bearerTokenSecret", "authorization", "tlsConfig",
                   "params", "followRedirects", "enableHttp2", "honorTimestamps", "basicAuth", "oauth2",
                   "proxyUrl", "filterRunning", "trackTimestampsStaleness"}
        for i, ep in enumerate(eps):
            if not isinstance(ep, dict):
                errors.append(f"spec.endpoints[{i}] is not an object")
                continue
            if "port" not in ep and "targetPort" not in ep:
                errors.append(f"spec.endpoints[{i}]: port or targetPort required")
            unknown = set(ep) - allowed
            if unknown:
                errors.append(f"spec.endpoints[{i}]: unknown fields {sorted(unknown)}")
    unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                           "podTargetLabels", "sampleLimit", "attachMetadata", "scrapeProtocols"}
    if unknown:
        errors.append(f"spec: unknown fields {sorted(unknown)}")
    return errors


CRD_CHECKS = {("monitoring.coreos.com/v1", "ServiceMonitor"): check_servicemonitor}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-version", action="append", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()

    failures = 0
    objects = 0
    notes = set()
    for path in args.files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            print(f"ERROR {path}: no objects")
            failures += 1
            continue
        for obj in docs:
            objects += 1
            kind, api = obj.get("kind"), obj.get("apiVersion")
            name = f"{kind}/{obj.get('metadata', {}).get('name')}"
            if (api, kind) in CRD_CHECKS:
                errs = CRD_CHECKS[(api, kind)](obj)
                notes.add(f"NOTE {kind} ({api}) is a custom resource: no Kubernetes schema exists for it; "
                          "checked structurally instead (selector, endpoints, known fields)")
                for e in errs:
                    print(f"ERROR {path}: {name}: {e}")
                failures += bool(errs)
                continue
            for version in args.k8s_version:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = ".".join(str(p) for p in e.path) or "(root)"
                    print(f"ERROR {path}: {name} against k8s {version}: {where}: {e.message}")
                    failures += 1
                except kubernetes_validate.SchemaNotFoundError as e:
                    print(f"ERROR {path}: {name}: {e.message} (unknown kind: add a check or fix the apiVersion)")
                    failures += 1
                except kubernetes_validate.VersionNotSupportedError as e:
                    print(f"ERROR kubernetes-validate does not support k8s {version}: {e.message}")
                    return 1
    for n in sorted(notes):
        print(n)
    print(f"schema validation: {objects} objects in {len(args.files)} files, "
          f"k8s {', '.join(args.k8s_version)} (strict): {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
