"""`lofipipe run`: the shipped recipes, the dry-run plan, the whole graph, and a rerun that
redoes nothing."""

import json
import re
from pathlib import Path

import pytest
import yaml
from support.cli import run, small_synth

from lofipipe.pipeline.job import check_job, training_runs
from lofipipe.schemas.config import load_config

RECIPES = sorted((Path(__file__).parents[2] / "lofipipe/recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_shipped_recipes_parse_and_show_their_command(recipe):
    assert recipe.read_text().startswith("# lofipipe ")
    config = load_config(str(recipe))
    check_job(config)
    assert training_runs(config)


def test_recipe_must_name_its_inputs(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("job: {root: out}\ntrain: {run: r}\n")
    from click.testing import CliRunner

    from lofipipe.cli import main

    result = CliRunner().invoke(main, ["run", "--config", str(path), "--dry-run"])
    assert result.exit_code == 2 and "job.videos: the recipe must name it" in result.output


STEPS = ("ingest", "materialize", "extract", "train r", "evaluate")


def _states(plan: str) -> dict[str, str]:
    """Each step's state in a dry-run's output (Ray's own lines may come between)."""
    return {step: re.search(rf"^{step}\s{{2,}}(\S+)", plan, re.M).group(1) for step in STEPS}


@pytest.mark.ray
def test_whole_graph_then_a_rerun_that_redoes_nothing(tmp_path, ray_local):
    run("synth", tmp_path / "data", *small_synth(4))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "job": {
                    "root": str(tmp_path / "root"),
                    "videos": str(tmp_path / "data/videos"),
                    "annotations": str(tmp_path / "data/annotations.json"),
                    "recipe": "head",
                },
                "materialize": {"schedule": "demo", "videos_per_shard": 2},
                "extract": {"encoder": "tiny"},
                "train": {
                    "run": "r",
                    "epochs": 3,
                    "batch_size": 2,
                    "warmup_epochs": 1,
                    "min_steps": 0,
                    "head": {"dim": 32, "levels": 3},
                },
            }
        )
    )
    plan = run("run", "--config", recipe, "--dry-run")
    assert _states(plan)["ingest"] == "pending"
    assert "4 videos listed, 4 to probe" in plan and not (tmp_path / "root").exists()

    output = run("run", "--config", recipe)
    assert "== ingest" in output and "== train" in output and "== evaluate r" in output
    evaluation = json.loads((tmp_path / "root/runs/r/evaluation.json").read_text())
    assert set(evaluation) >= {"average_mAP", "mAP", "per_class"}

    plan = run("run", "--config", recipe, "--dry-run")
    assert set(_states(plan).values()) == {"done"}, plan
    assert "4 videos listed, 0 to probe" in plan
    again = run("run", "--config", recipe)
    assert "(0 written, 2 already done)" in again and "(resumed after epoch 3)" in again
    assert json.loads((tmp_path / "root/runs/r/evaluation.json").read_text()) == evaluation
