"""Offline checks of the deployment files: helm, Kubernetes and CRD schemas, Ray Serve's
config schema, PromQL (promtool). ``python -m deploy.checks`` runs them all."""
