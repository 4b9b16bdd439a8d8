"""The shipped Serve config deploys: Ray's own schema accepts it, and its args are a valid
ServeConfig that builds an application."""

from pathlib import Path

import yaml

from embedforge.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]


def test_serve_deploy_config_validates_and_builds():
    from ray.serve.schema import ServeDeploySchema

    from embedforge.serve.app import build_app

    raw = yaml.safe_load((ROOT / "cluster" / "serve" / "embedforge-serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(raw)
    (app,) = schema.applications
    assert app.import_path == "embedforge.serve.app:build_app"
    cfg = ServeConfig.model_validate(app.args)
    assert cfg.replicas == "auto" and cfg.num_gpus == 1 and cfg.encoder.bidirectional
    built = build_app(app.args)
    deployment = built._bound_deployment
    assert deployment.ray_actor_options["num_gpus"] == 1
    assert deployment._deployment_config.autoscaling_config.max_replicas == 8


def test_build_app_takes_dotted_cli_args():
    from embedforge.serve.app import build_app

    built = build_app({"encoder.model": "/m", "num_cpus": "2", "replicas": "3"})
    assert built._bound_deployment.num_replicas == 3
    assert built._bound_deployment.ray_actor_options["num_cpus"] == 2
