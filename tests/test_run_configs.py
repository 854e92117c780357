"""Profile parameters -> TrainConfig: every profile still yields the runs it did before the keys were renamed.

``fixtures/train_configs_by_profile.json`` holds ``asdict`` of each TrainConfig that notebooks 02, 03
and 06 built for the cpu, paper and test profiles before the parameters were named after TrainConfig
fields (one map, :func:`longalign.train.config_from_params`); run names and values must not move, so
existing checkpoints and records stay valid. Paths are stored relative to ``<OUT>`` / ``<ROOT>``.
After a deliberate change of a profile's runs, ``LONGALIGN_REGEN_FIXTURES=1 pytest tests/test_run_configs.py``
rewrites the fixture; review its diff before committing.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from longalign import config, context, paths, train
from longalign.eval import scaling

EXPECTED = json.loads((Path(__file__).parent / "fixtures" / "train_configs_by_profile.json").read_text())


def _params(profile: str, notebook: str) -> dict:
    """A notebook's parameters as papermill gives them: the cell's defaults, the profile's values over them."""
    return {**config.parameters_cell(paths.NOTEBOOKS / f"{notebook}.ipynb"), **config.notebook_params(profile, notebook)}


def _norm(cfg: train.TrainConfig, out: Path) -> dict:
    return json.loads(json.dumps(asdict(cfg)).replace(str(out), "<OUT>").replace(str(paths.ROOT), "<ROOT>"))


@pytest.fixture()
def out(tmp_path, monkeypatch):
    """outputs/ with every suite's (empty) mix file; naive / sorted GA derivation stubbed to 7 (it tokenizes data)."""
    root = tmp_path / "out"
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(root))
    (root / "data").mkdir(parents=True)
    for suite in ("long0", "long5", "long10", "longalpaca"):
        (root / "data" / f"mix-{suite}.jsonl").write_text("")
    monkeypatch.setattr(train, "derive_naive_grad_accum", lambda params, outputs_root, batch=None: 7)
    return root


def _notebook02(p: dict) -> list[train.TrainConfig]:
    """The TrainConfigs notebook 02 builds (its cells 2, 7, 9 and 10), seed by seed."""
    released = p["released_base"] is not None
    long_steps = p["long_steps"] if released else context.long_steps_for(
        p["long_steps"], p["long_tokens"], p["long_len"], p["long_batch"], p["launch_nproc"])
    seeds = [] if released else [p["seed"] + k for k in range(p["num_seeds"])]
    cfgs = [train.config_from_params({**p, "seed": s, "learning_rate": p["short_learning_rate"]}, method="pretrain",
                                     model="tiny", output_name=f"ctx-short-seed{s}",
                                     max_len=p["short_len"], max_steps=p["short_steps"],
                                     per_device_batch=p["short_batch"], max_position=p["short_len"])
            for s in (seeds if p["base_model"] == "tiny" else [])]
    variants = [] if released else ["rope"] + (["same-base"] if p["same_base_ablation"] else [])
    return cfgs + [train.config_from_params({**p, "seed": s}, method="pretrain",
                                            model=str(paths.models_dir() / f"ctx-start-{v}-seed{s}"),
                                            output_name=f"ctx-long-{v}-seed{s}", max_len=p["long_len"], max_steps=long_steps,
                                            per_device_batch=p["long_batch"]) for s in seeds for v in variants]


@pytest.mark.parametrize("profile", config.PROFILES)
def test_profiles_build_the_same_run_configs(profile, out):
    spec = importlib.util.spec_from_file_location("train_script", paths.ROOT / "scripts" / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    p3 = script.profile_params(profile)  # scripts/train.py --profile and the notebook share these parameters
    assert p3 == _params(profile, "03_training_methods")
    (out / "models" / p3["base_model"]).mkdir(parents=True)
    got = {"03": [_norm(c, out) for c in train.training_run_configs(p3, out) + train.curve_run_configs(p3, out)]}
    p6 = _params(profile, "06_scaling")
    for v in p6["variants"]:
        (out / "models" / v.get("model", "tiny")).mkdir(parents=True, exist_ok=True)
    data = [str(train.suite_data(out, p6["suite"]))]
    got["06"] = [_norm(scaling.variant_config(v, data, p6), out) for v in p6["variants"]]
    got["02"] = [_norm(c, out) for c in _notebook02(_params(profile, "02_context_extension"))]
    if os.environ.get("LONGALIGN_REGEN_FIXTURES"):
        fixture = Path(__file__).parent / "fixtures" / "train_configs_by_profile.json"
        fixture.write_text(json.dumps({**json.loads(fixture.read_text()), profile: got}, indent=1, sort_keys=True) + "\n")
        EXPECTED[profile] = got
    assert got == EXPECTED[profile]


def test_method_overrides_are_trainconfig_fields(out):
    params = {"methods": ["naive", "packing"], "suite": "long10", "max_len": 256, "per_device_batch": 2,
              "grad_accum": 3, "method_overrides": {"naive": {"grad_accum": 12, "max_len": 128, "per_device_batch": 1}}}
    naive, packed = train.training_run_configs(params, out)
    assert (naive.per_device_batch, naive.grad_accum, naive.max_len) == (1, 12, 128)
    assert (packed.per_device_batch, packed.grad_accum, packed.max_len) == (2, 3, 256)
    with pytest.raises(ValueError, match=r"method_overrides\['naive'\] has keys \['naive_batch'\]"):
        train.training_run_configs({**params, "method_overrides": {"naive": {"naive_batch": 2}}}, out)


def test_config_from_params_maps_fields_shape_and_unset():
    params = {"base_model": "tiny", "learning_rate": 0.5, "hidden": 64, "layers": 2, "suite": "ignored",
              "deepspeed": "configs/deepspeed/zero3_offload.json"}
    cfg = train.config_from_params(params, max_len=64, heads=2)
    assert (cfg.model, cfg.learning_rate, cfg.max_len) == ("tiny", 0.5, 64)
    assert cfg.model_overrides == {"hidden": 64, "layers": 2, "heads": 2}
    assert cfg.deepspeed == str(paths.ROOT / "configs/deepspeed/zero3_offload.json")
    hub = train.config_from_params(params, model="some/hub-model", layers=3)  # shape params only shape the tiny Llama
    assert hub.model_overrides == {"layers": 3}
    with pytest.raises(ValueError, match=r"\['grad_accum'\] are None"):
        train.config_from_params({"grad_accum": None})
