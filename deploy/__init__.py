"""Scale-out: the Helm chart, KServe and KubeRay manifests, the Ray Serve application and
the checks that validate them offline (see docs/deployment.md)."""
