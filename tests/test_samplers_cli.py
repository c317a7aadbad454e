"""experiments/samplers.py: a trained run's samplers side by side (cost and quality), on a smoke run."""

import json
import os

import pytest

from experiments import cli, samplers
from experiments.configs import ddpm_toy
from experiments.run import train_and_evaluate


@pytest.mark.slow  # trains a smoke run, then compiles six samplers
def test_sampler_table_of_a_trained_run(tmp_path):
    config = ddpm_toy.get_config("smoke")
    wd = str(tmp_path)
    train_and_evaluate(config, wd, progress=False)
    rows = samplers.compare(config, wd, [("ddim", 5), ("dpm_solver_pp_2m", 5), ("dpm_solver_pp_2m_sde", 5),
                                         ("edm_heun", 3), ("dpm_solver_pp_2m", 5, "karras")], n=64, seed=0, log=None)
    assert [r["nfe"] for r in rows] == [5, 5, 5, 5, 5]
    assert rows[-1]["sampler"] == "dpm_solver_pp_2m (karras)"
    for r in rows:
        assert 0 <= r["modes"] <= 8 and r["frechet_2d"] >= 0 and r["ms_per_sample"] > 0
    path = samplers.write(rows, wd, "smoke")
    assert "| dpm_solver_pp_2m | 5 | 5 | 64 |" in open(path).read()
    assert len(json.load(open(os.path.join(wd, "samplers.json")))) == 5
    with pytest.raises(ValueError, match="spacing .* is an option of the DPM-Solver"):
        samplers.compare(config, wd, [("edm_heun", 3, "karras")], n=8, seed=0, log=None)


def test_sampler_items_parse_with_their_options():
    assert samplers.parse_samplers("ddpm:1000, edm_heun:18:10,dpm_solver_pp_2m_sde:20:karras,dpm_solver_pp_2m:20") == [
        ("ddpm", 1000), ("edm_heun", 18, 10.0), ("dpm_solver_pp_2m_sde", 20, "karras"), ("dpm_solver_pp_2m", 20)]
    for bad in ("ddpm", "ddpm:x", "ddpm:0", "edm_heun:18:x", "edm_heun:18:1:2", "ddpm:1000:karras",
                "dpm_solver_pp_2m:20:quadratic"):
        with pytest.raises(cli.UsageError, match="--samplers expects"):
            samplers.parse_samplers(bad)
