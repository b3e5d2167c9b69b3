"""A RayService's ``spec.serveConfigV2`` checked with Ray Serve's own schema (ray[serve]).

Ray's pydantic models ignore unknown keys (``max_replica: 4`` passes) and ServeDeploySchema
leaves ``autoscaling_config`` a plain dict, so both are checked here too: every key must be a
field of its model, and AutoscalingConfig validates each deployment's autoscaling (which also
imports ``policy_function``: the app's package must be importable).
"""

from __future__ import annotations

import pydantic
import yaml
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy
from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

_IMPORT_ERRORS = (ImportError, AttributeError)  # Ray imports policy_function while validating


def _unknown(obj: dict | None, model: type[pydantic.BaseModel], where: str) -> list[str]:
    return [f"{where}.{key}: not a field of {model.__name__}" for key in (obj or {}) if key not in model.model_fields]


def serve_config_errors(serve_config: str) -> list[str]:
    """Every problem in a serveConfigV2 YAML string; [] if Serve would accept it as meant."""
    config = yaml.safe_load(serve_config)
    if not isinstance(config, dict):
        return [f"serveConfigV2 is not a mapping: {type(config).__name__}"]
    errors = _unknown(config, ServeDeploySchema, "serveConfigV2")
    try:
        ServeDeploySchema.model_validate(config)
    except pydantic.ValidationError as e:
        errors += [f"serveConfigV2: {err['loc']}: {err['msg']}" for err in e.errors()]
    except _IMPORT_ERRORS as e:  # a policy_function that does not import
        errors.append(f"serveConfigV2: {type(e).__name__}: {e}")
    for i, app in enumerate(config.get("applications") or []):
        errors += _unknown(app, ServeApplicationSchema, f"applications[{i}]")
        for j, deployment in enumerate(app.get("deployments") or []):
            where = f"applications[{i}].deployments[{j}]"
            errors += _unknown(deployment, DeploymentSchema, where)
            autoscaling = deployment.get("autoscaling_config")
            if autoscaling:
                errors += _unknown(autoscaling, AutoscalingConfig, f"{where}.autoscaling_config")
                errors += _unknown(autoscaling.get("policy"), AutoscalingPolicy, f"{where}.autoscaling_config.policy")
                try:
                    AutoscalingConfig(**autoscaling)
                except (pydantic.ValidationError, ValueError, *_IMPORT_ERRORS) as e:
                    errors.append(f"{where}.autoscaling_config: {e}")
    return errors
