"""cluster.yaml passes Ray's own cluster-config preparation and schema validation (what `ray up` runs)."""
from __future__ import annotations

import copy
import pathlib

import yaml

ROOT = pathlib.Path(__file__).parent.parent


def test_cluster_yaml_validates_with_ray():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    types = config["available_node_types"]
    assert config["provider"]["type"] == "aws"
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith("g5.")
    assert ray.__version__ in raw["docker"]["image"]
    assert any("constraints.txt" in c and "reslabel" in c for c in raw["setup_commands"])
    text = (ROOT / "cluster.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "aws_access_key_id" not in text
