"""The training entry point: config checks, loss terms, run record contract, resume, notebook-03 run configs."""

from __future__ import annotations

import shutil

import datasets
from chatdata import random_chat_dataset
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from longalign import collate
from longalign import models
from longalign.loss import check_chunked_ce, forward_loss_sums, loss_sums, objective
from longalign.train import (TrainConfig, collate_micro_batch, curve_run_configs, run_training, seeds_of_method, suite_data,
                             training_run_configs)

RECORD_KEYS = {"method", "seed", "wall_s", "tokens", "tokens_per_s", "padding_fraction", "final_loss_token",
               "final_loss_sequence", "log", "checkpoints", "machine", "steps"}


def tiny_data(n: int = 12, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    return random_chat_dataset([int(rng.integers(8, 60)) for _ in range(n)], rng)


def small(method: str, name: str, **kw) -> TrainConfig:
    base = dict(method=method, output_name=name, max_len=128, max_steps=2, learning_rate=1e-3, warmup_ratio=0.0,
                dtype="float64", model_overrides={"hidden": 32, "layers": 1, "heads": 2})
    return TrainConfig(**{**base, **kw})


@pytest.fixture()
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(tmp_path / "out"))
    return tmp_path / "out"


def test_config_rejects_unknown_keys_and_methods():
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"methd": "naive"})
    with pytest.raises(ValueError, match="unknown method"):
        TrainConfig(method="packed").validate()
    assert TrainConfig.from_dict({"adam_betas": [0.9, 0.95]}).adam_betas == (0.9, 0.95)
    assert TrainConfig(method="sorted", seed=3).name() == "sorted-seed3"


def test_loss_terms_match_hand_computation():
    """Σ CE, Σ CE/N_i and Σ CE/N_pack on a two-pack row, and each method's objective."""
    torch.manual_seed(0)
    feats = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4], "pack_id": 0},
             {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "pack_id": 0},
             {"input_ids": [8, 9, 10, 11, 12], "labels": [-100, 9, 10, 11, 12], "pack_id": 1}]
    batch = collate.PackingCollator()(feats)
    batch["pack_ids"] = torch.tensor([[0] * 7 + [1] * 5])
    logits = torch.randn(1, 12, 20, dtype=torch.float64)
    ce = F.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100, reduction="none")
    seq_sums = [ce[1:3].sum(), ce[4:6].sum(), ce[7:11].sum()]  # targets of each sequence (shifted)
    sums = loss_sums(logits, batch)
    assert torch.allclose(sums["ce"], sum(seq_sums))
    assert torch.allclose(sums["seq"], seq_sums[0] / 2 + seq_sums[1] / 2 + seq_sums[2] / 4)
    assert torch.allclose(sums["pack"], (seq_sums[0] + seq_sums[1]) / 4 + seq_sums[2] / 4)
    totals = {"targets": 8, "sequences": 3, "packs": 2}
    assert torch.allclose(objective("packing_weighted", sums, totals, 2), 2 * sums["seq"] / 3)
    assert torch.allclose(objective("packing", sums, totals, 1), sums["pack"] / 2)
    assert torch.allclose(objective("pretrain", sums, totals, 1), sums["ce"] / 8)


def test_chunked_ce_refuses_models_whose_logits_are_not_a_plain_head():
    conf = models.tiny_llama_config(64, hidden=16, layers=1, heads=2, max_position=64)
    model = models.tiny_llama(conf, seed=0)
    check_chunked_ce(model)  # plain Llama: fine
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="soft-caps"):
        check_chunked_ce(model)
    model.config.final_logit_softcapping = None
    model.lm_head = torch.nn.Linear(16, 64, bias=True)
    with pytest.raises(ValueError, match="bias-free Linear"):
        check_chunked_ce(model)
    with pytest.raises(ValueError, match="ce_chunk_size"):
        TrainConfig(ce_chunk_size=-1).validate()


def test_chunked_ce_finds_the_head_by_vocabulary_size():
    """Remote-code models without get_output_embeddings (ChatGLM3): the one vocab-sized Linear is the head."""
    conf = models.tiny_llama_config(96, hidden=16, layers=1, heads=2, max_position=64)
    model = models.tiny_llama(conf, seed=0, dtype=torch.float64)
    model.get_output_embeddings = lambda: None
    assert check_chunked_ce(model) is model.lm_head
    rng = np.random.default_rng(0)
    feats = [{"input_ids": rng.integers(4, 96, n).tolist(), "labels": [-100] * 3 + rng.integers(4, 96, n - 3).tolist(),
              "pack_id": 0} for n in (9, 13)]
    batch = collate_micro_batch(feats, True, 0)
    full, _ = forward_loss_sums(model, batch, "packing_weighted", 0)
    chunked, _ = forward_loss_sums(model, batch, "packing_weighted", 4)
    assert all(torch.allclose(full[k], chunked[k], rtol=1e-12) for k in full)


@pytest.mark.parametrize("method", ["naive", "sorted", "packing", "packing_weighted"])
def test_run_record_contract(method, outputs):
    per_device = 3 if method in ("naive", "sorted") else 1
    rec = run_training(small(method, f"c-{method}", per_device_batch=per_device), dataset=tiny_data())
    assert RECORD_KEYS <= set(rec) and rec["method"] == method and rec["steps"] == 2
    row = rec["log"][0]
    assert {"loss_token", "loss_sequence", "lr", "compute_s", "wait_s", "step_s"} <= set(row)
    assert np.isfinite(rec["final_loss_token"]) and np.isfinite(rec["final_loss_sequence"])
    assert (rec["padding_fraction"] > 0) == (method in ("naive", "sorted"))
    ckpt = outputs / rec["checkpoints"][-1]["path"]
    assert rec["checkpoints"][-1]["path"] == f"runs/c-{method}/checkpoint-2"
    assert (ckpt / "config.json").is_file() and (ckpt / "tokenizer.json").is_file()
    assert run_training(small(method, f"c-{method}", per_device_batch=per_device), dataset=tiny_data()) == rec


def test_changed_config_under_same_name_is_refused(outputs):
    run_training(small("packing_weighted", "same"), dataset=tiny_data())
    with pytest.raises(ValueError, match="different config"):
        run_training(small("packing_weighted", "same", learning_rate=5e-3), dataset=tiny_data())


def test_resume_reproduces_uninterrupted_run(outputs):
    """Kill after step 2 (drop later checkpoints and the record): the resumed run ends at the same weights."""
    cfg = small("packing_weighted", "resume", max_steps=4, save_steps=2, max_len=64)
    data = tiny_data(16)
    rec = run_training(cfg, dataset=data)
    run_dir = outputs / "runs" / "resume"
    full = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoint-4", dtype=torch.float64).state_dict()
    shutil.rmtree(run_dir / "checkpoint-4")
    (outputs / "runs" / "resume.json").unlink()
    again = run_training(cfg, dataset=data)
    resumed = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoint-4", dtype=torch.float64).state_dict()
    assert again["steps"] == 4 and [r["step"] for r in again["log"]] == [1, 2, 3, 4]
    assert all(torch.allclose(full[k], resumed[k], rtol=0, atol=1e-10) for k in full)
    assert again["log"][-1]["loss_sequence"] == pytest.approx(rec["log"][-1]["loss_sequence"], abs=1e-10)


def test_notebook03_configs(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_data_construction"):
        suite_data(tmp_path, "long10")
    (tmp_path / "data").mkdir()
    for s in ("long0", "long10"):
        (tmp_path / "data" / f"mix-{s}.jsonl").write_text("")
    params = {"methods": ["naive", "packing_weighted"], "suite": "long10", "suites": ["long0", "long10"],
              "seed": 5, "num_seeds": 2, "max_len": 256, "base_model": "tiny", "per_device_batch": 2,
              "grad_accum": 1, "method_overrides": {"naive": {"per_device_batch": 1, "grad_accum": 12}}}
    cfgs = training_run_configs(params, tmp_path)
    names = [c.name() for c in cfgs]
    assert names == ["naive-seed5", "packing_weighted-seed5", "naive-seed6", "packing_weighted-seed6",
                     "long0-packing_weighted-seed5", "long0-packing_weighted-seed6"]
    assert (cfgs[0].per_device_batch, cfgs[0].grad_accum) == (1, 12)
    assert (cfgs[1].per_device_batch, cfgs[1].grad_accum) == (2, 1)
    assert cfgs[-1].data[0].endswith("mix-long0.jsonl")
    assert all(c.save_steps == 0 for c in cfgs)
    # run_overrides: one run's fields (intermediate checkpoints for the learning-curve run), after method_overrides
    over = {**params, "run_overrides": {"packing_weighted-seed5": {"save_steps": 1}, "naive-seed6": {"grad_accum": 3}}}
    by_name = {c.name(): c for c in training_run_configs(over, tmp_path)}
    assert [n for n, c in by_name.items() if c.save_steps] == ["packing_weighted-seed5"]
    assert (by_name["naive-seed6"].grad_accum, by_name["naive-seed5"].grad_accum) == (3, 12)
    # method_seeds: one method gets more seeds than num_seeds (seed-major order); suites keep num_seeds
    more = [c.name() for c in training_run_configs({**params, "method_seeds": {"packing_weighted": 3}}, tmp_path)]
    assert more == ["naive-seed5", "packing_weighted-seed5", "naive-seed6", "packing_weighted-seed6",
                    "packing_weighted-seed7", "long0-packing_weighted-seed5", "long0-packing_weighted-seed6"]
    narrowed = {**params, "methods": ["naive"], "method_seeds": {"packing_weighted": 3}}  # as notebook 03's probe
    assert [c.name() for c in training_run_configs(narrowed, tmp_path)][:2] == ["naive-seed5", "naive-seed6"]
    with pytest.raises(ValueError, match=r"method_seeds names methods \['packed'\] that do not exist"):
        training_run_configs({**params, "method_seeds": {"packed": 3}}, tmp_path)
    with pytest.raises(ValueError, match=r"method_seeds\['naive'\] must be an int >= 1"):
        training_run_configs({**params, "method_seeds": {"naive": 0}}, tmp_path)
    with pytest.raises(ValueError, match=r"run_overrides names runs \['packing-seed5'\]"):
        training_run_configs({**params, "run_overrides": {"packing-seed5": {"save_steps": 1}}}, tmp_path)
    with pytest.raises(ValueError, match=r"run_overrides\['naive-seed5'\] has keys \['save_every'\]"):
        training_run_configs({**params, "run_overrides": {"naive-seed5": {"save_every": 1}}}, tmp_path)


def test_curve_run_is_its_own_run_over_the_method_settings(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mix-long10.jsonl").write_text("")
    params = {"methods": ["packing_weighted"], "suite": "long10", "seed": 5, "max_steps": 12, "base_model": "tiny",
              "grad_accum": 2, "learning_rate": 1e-3, "method_overrides": {"packing_weighted": {"grad_accum": 4}}}
    assert curve_run_configs(params, tmp_path) == [] == curve_run_configs({**params, "curve_run": {}}, tmp_path)
    [cfg] = curve_run_configs({**params, "curve_run": {"num_epochs": 2.0, "max_steps": -1, "save_steps": 8}}, tmp_path)
    assert cfg.name() == "curve-packing_weighted-seed5" and cfg.method == "packing_weighted" and cfg.seed == 5
    assert (cfg.num_epochs, cfg.max_steps, cfg.save_steps) == (2.0, -1, 8)  # its own schedule, checkpoints along it
    assert (cfg.grad_accum, cfg.learning_rate) == (4, 1e-3)  # the method's settings otherwise
    assert cfg.data[0].endswith("mix-long10.jsonl")
    assert cfg.name() not in {c.name() for c in training_run_configs(params, tmp_path)}  # not a compared run
    [other] = curve_run_configs({**params, "curve_run": {"method": "packing", "seed": 9, "max_steps": 30}}, tmp_path)
    assert (other.name(), other.grad_accum, other.max_steps) == ("curve-packing-seed9", 2, 30)
    with pytest.raises(ValueError, match=r"curve_run has keys \['save_every'\] that are not TrainConfig fields"):
        curve_run_configs({**params, "curve_run": {"save_every": 8}}, tmp_path)


def test_packing_is_refused_for_chatglm_before_any_loading(tmp_path, outputs):
    """ChatGLM's remote code attends across packed sequences: packed methods stop with a message; naive may run."""
    from longalign.train import check_packing_supported

    folder = tmp_path / "chatglm3-6b"  # config.json only: reaching the tokenizer or model would fail differently
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "chatglm", "architectures": ["ChatGLMModel"], "auto_map": '
                                        '{"AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}}')
    for method in ("packing", "packing_weighted", "pretrain"):
        with pytest.raises(ValueError, match=r"packing is refused for .*chatglm3-6b.*'chatglm'.*attend to each other"
                                             r".*'naive' or 'sorted'.*LongAlign-7B-64k-base"):
            run_training(TrainConfig(method=method, model=str(folder), data=[str(folder / "config.json")]))
    check_packing_supported(TrainConfig(method="sorted", model=str(folder)))
    (folder / "config.json").write_text('{"model_type": "llama"}')  # a native architecture packs exactly
    check_packing_supported(TrainConfig(method="packing_weighted", model=str(folder)))


def _chat_rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [{"messages": [{"role": "user", "content": " ".join(rng.choice(words, int(rng.integers(10, 60))))},
                          {"role": "assistant", "content": " ".join(rng.choice(words, int(rng.integers(5, 40))))}]}
            for _ in range(n)]


@pytest.fixture()
def suites_out(tmp_path, monkeypatch):
    """outputs/ with notebook 01's four mix files and notebook 02's extended model (its tokenizer is enough here)."""
    from longalign import records
    out = tmp_path / "suites-out"
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(out))
    for k, suite in enumerate(("long0", "long5", "long10", "longalpaca")):
        records.write_jsonl(out / "data" / f"mix-{suite}.jsonl", _chat_rows(30, k))
    models.cpu_tokenizer().save_pretrained(out / "models" / "tiny-longctx")
    return out


def test_naive_grad_accum_none_is_derived_once_for_notebook_and_script(suites_out):
    """naive ``grad_accum: None`` -> sequences per pack x packs per step / naive batch, from the suite's token lengths."""
    from longalign import packing, tokenize
    from longalign.train import derive_naive_grad_accum

    params = {"methods": ["naive", "packing_weighted"], "suite": "long10", "suites": [], "max_len": 256,
              "base_model": "tiny-longctx", "per_device_batch": 2, "grad_accum": 3,
              "method_overrides": {"naive": {"grad_accum": None, "max_len": 128}}}
    rows, _ = tokenize.tokenize_jsonl([suites_out / "data" / "mix-long10.jsonl"], models.cpu_tokenizer(), 256)
    lengths = list(rows["length"])
    expected = round(len(lengths) / len(packing.pack(lengths, 256)) * 2 * 3 / 2)
    assert expected > 1 and derive_naive_grad_accum(params, suites_out) == expected
    naive, packed = training_run_configs(params, suites_out)
    assert (naive.grad_accum, naive.per_device_batch, naive.max_len) == (expected, 2, 128)
    assert (packed.grad_accum, packed.per_device_batch, packed.max_len) == (3, 2, 256)


def test_script_profile_trains_what_it_names(suites_out):
    """scripts/train.py --profile: the main suite's runs by default, suite runs only with --suite; cpu's GA None resolves."""
    import importlib.util
    from longalign import config, paths

    spec = importlib.util.spec_from_file_location("train_script", paths.ROOT / "scripts" / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    names = lambda argv: [c.name() for c in script.configs_from_args(script.parse_args(["--profile", "cpu", *argv]))]
    assert names(["--method", "packing_weighted", "--seed", "0"]) == ["packing_weighted-seed0"]
    naive = script.configs_from_args(script.parse_args(["--profile", "cpu", "--method", "naive"]))
    seeds = config.notebook_params("cpu", "03_training_methods")["num_seeds"]
    assert seeds >= 2
    assert [c.name() for c in naive] == [f"naive-seed{s}" for s in range(seeds)] and all(c.grad_accum >= 1 for c in naive)
    assert names(["--seed", "1", "--suite", "long0", "--suite", "longalpaca"]) == [
        "long0-packing_weighted-seed1", "longalpaca-packing_weighted-seed1"]
    cpu = config.notebook_params("cpu", "03_training_methods")
    per_method = [seeds_of_method(cpu, m) for m in cpu["methods"]]
    assert len(names(["--suite", "long10"])) == sum(per_method) > 4 * seeds  # the main suite: method_seeds adds seeds


def test_parallel_workers_train_what_one_process_trains(suites_out):
    """launch_runs(workers=2): each run in its own spawned process ends at the in-process run's losses and weights."""
    from longalign.train import launch_runs

    data = [str(suites_out / "data" / "mix-long10.jsonl")]
    cfgs = lambda tag: [small(m, f"{tag}-{m}", data=data, model="tiny", tokenizer=str(suites_out / "models" / "tiny-longctx"),
                              num_threads=1) for m in ("packing_weighted", "sorted", "packing")]
    alone = launch_runs(cfgs("alone"), workers=1)
    together = launch_runs(cfgs("together"), workers=2)
    assert [r["name"] for r in together] == [c.name() for c in cfgs("together")]
    for a, b in zip(alone, together):
        assert [row["loss_sequence"] for row in b["log"]] == pytest.approx([row["loss_sequence"] for row in a["log"]],
                                                                           rel=0, abs=1e-12)
        wa, wb = (AutoModelForCausalLM.from_pretrained(suites_out / r["checkpoints"][-1]["path"], dtype=torch.float64).state_dict()
                  for r in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_failed_parallel_run_raises_with_its_reason(suites_out):
    from longalign.train import launch_runs

    good = small("packing_weighted", "ok", data=[str(suites_out / "data" / "mix-long10.jsonl")],
                 tokenizer=str(suites_out / "models" / "tiny-longctx"), num_threads=1)
    bad = small("packing_weighted", "bad", tokenized_dir=str(suites_out / "no-such-folder"), num_threads=1)
    with pytest.raises(RuntimeError, match="run bad failed: .*no-such-folder.*worker output: .*launch"):
        launch_runs([good, bad], workers=2)
