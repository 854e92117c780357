"""The paper profile's code paths, end to end at tiny sizes, on a CPU machine.

Nobody can run ``configs/paper.yaml`` here (8 GPUs, API keys, 64k packs), so this file runs it with
ONLY sizes, models and locations swapped (``tests/fixtures/paper/tiny_overrides.yaml``; a test checks
every swapped key against an allow-list): the notebooks' paper branches in order 00..07 under
papermill, DeepSpeed ZeRO-3 + CPU offload with 2 gloo processes and bf16, the Anthropic / OpenAI
judges and generator under the paper's model names through a local fake server in the providers'
wire formats (keys are fake values from the environment and must appear in no output), the
official LongBench-Chat / LongBench / LongAlpaca-12k / MT-Bench formats read from small fixtures,
and the lm-eval-harness command built for our own checkpoints.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import AutoConfig

from fakeapi import fake_api  # noqa: F401 — pytest fixture
from longalign import config, context, models, paths, records
from longalign.data import corpus, sharegpt
from longalign.data.grounded import grounded_responder
from longalign.eval import harness, judge as J, longbench as LB, longbench_chat as LBC, mtbench as MT
from longalign.llm import LLMClient

FIXTURES = paths.ROOT / "tests" / "fixtures" / "paper"
OVERRIDES = FIXTURES / "tiny_overrides.yaml"
FAKE_KEYS = {"ANTHROPIC_API_KEY": "sk-ant-fake-paper-profile-93be1d", "OPENAI_API_KEY": "sk-fake-paper-profile-5a0c7e"}
JUDGE_RATING = 2  # inside every rubric's scale: LongBench QA 1-3, summaries 1-5, LongBench-Chat / MT-Bench / NIAH 1-10

# The only keys the tiny profile may change, by kind. Everything else (methods, judge names, DeepSpeed
# config, bf16, ce_chunk_size, prompt styles, learning rates, benchmark sources) comes from paper.yaml.
SIZE_KEYS = {"num_records", "record_max_len", "max_len", "num_documents", "concurrency", "min_len", "reserve_tokens",
             "heldout_documents", "num_short", "max_tokens_questions", "max_tokens_answer", "short_len", "long_len",
             "long_steps", "text_chars", "eval_windows", "position_bins", "launch_nproc", "max_steps",
             "method_overrides", "heldout_rows", "context_lengths", "n_depths", "max_new_tokens", "long_limit",
             "short_limit", "long_max_new_tokens", "short_max_new_tokens", "eval_max_len", "qa_items",
             "qa_max_new_tokens", "max_input_tokens", "mtbench_questions", "mtbench_max_new_tokens"}
MODEL_KEYS = {"model_name", "tokenizer_name", "base_model", "models", "checkpoint_runs", "variants"}
LOCATION_KEYS = {"sources", "short_data_path", "longalpaca_path", "test_cases_path", "few_shots_path", "longbench_root"}
# a scaling variant may swap its model and its sizes, never its method
VARIANT_SWAPPABLE = {"model", "max_len", "grad_accum"}


def load_overrides() -> dict[str, dict[str, Any]]:
    """The tiny overrides, notebook stem -> {key: value}, placeholders unexpanded."""
    return yaml.safe_load(OVERRIDES.read_text(encoding="utf-8"))


def extended_name() -> str:
    """The name notebook 02 gives its extended model in the paper profile (what 03 and 06 train from)."""
    return config.load_profile("paper")["02_context_extension"]["extended_name"]


def expand(value: Any, work: Path) -> Any:
    """``value`` with @FIXTURES@ / @WORK@ / @EXTENDED@ replaced, recursively."""
    if isinstance(value, str):
        value = value.replace("@FIXTURES@", str(FIXTURES)).replace("@WORK@", str(work))
        return value.replace("@EXTENDED@", extended_name())
    if isinstance(value, list):
        return [expand(v, work) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, work) for k, v in value.items()}
    return value


def tiny_paper_profile(work: Path) -> dict[str, dict[str, Any]]:
    """configs/paper.yaml with the tiny overrides applied (and nothing else)."""
    paper = config.load_profile("paper")
    return {nb: {**params, **expand(load_overrides().get(nb, {}), work)} for nb, params in paper.items()}


# ----------------------------------------------------------------------------- the overrides themselves


def test_overrides_swap_only_sizes_models_and_locations():
    paper, allowed = config.load_profile("paper"), SIZE_KEYS | MODEL_KEYS | LOCATION_KEYS
    for nb, section in load_overrides().items():
        assert nb in paper, f"{nb}: no such section in configs/paper.yaml"
        for key in section:
            assert key in allowed, f"{nb}.{key} is neither a size, a model nor a location: it must come from paper.yaml"
            assert key in paper[nb], f"{nb}.{key} is not a paper.yaml key: the overrides may only replace values"
    per_method = load_overrides()["03_training_methods"]["method_overrides"]  # sizes only, for the same methods
    assert set(per_method) == set(paper["03_training_methods"]["method_overrides"])
    assert all(set(v) <= {"grad_accum", "max_len"} for v in per_method.values())
    paper_variants, tiny_variants = paper["06_scaling"]["variants"], expand(load_overrides()["06_scaling"]["variants"], Path())
    assert len(tiny_variants) == len(paper_variants)
    for ours, theirs in zip(tiny_variants, paper_variants):
        assert ours["name"] == theirs["name"] and set(ours) == set(theirs), (ours, theirs)
        assert {k for k in ours if ours[k] != theirs[k]} <= VARIANT_SWAPPABLE, (ours, theirs)


def test_tiny_profile_keeps_the_paper_settings(tmp_path):
    tiny, paper = tiny_paper_profile(tmp_path), config.load_profile("paper")
    swapped = load_overrides()
    for nb, params in paper.items():
        kept = {k: v for k, v in params.items() if k not in swapped.get(nb, {})}
        assert {k: tiny[nb][k] for k in kept} == kept
    # the paper's settings, as literals: a change to paper.yaml must be a conscious one here too
    assert tiny["03_training_methods"]["deepspeed"] == "configs/deepspeed/zero3_offload.json"
    assert tiny["03_training_methods"]["bf16"] is True and tiny["03_training_methods"]["ce_chunk_size"] == 4096
    assert tiny["01_data_construction"]["backend"] == "anthropic" and tiny["01_data_construction"]["model"] == "claude-2.1"
    assert all(tiny[nb]["judge"] == "openai" and tiny[nb]["judge_model"].startswith("gpt-4")
               for nb in ("04_needle_heatmaps", "05_learning_curves", "07_longbench_chat"))
    assert tiny["07_longbench_chat"]["benchmark_source"] == "official"


# ----------------------------------------------------------------------------- loaders on official formats


def test_longbench_chat_reads_official_files():
    raw_cases = json.loads((FIXTURES / "longbench_chat" / "test_cases.json").read_text())
    raw_shots = json.loads((FIXTURES / "longbench_chat" / "few_shots.json").read_text())
    items = LBC.load_test_cases(FIXTURES / "longbench_chat" / "test_cases.json")
    shots = LBC.load_few_shots(FIXTURES / "longbench_chat" / "few_shots.json")
    assert [(it["idx"], it["question"], it["prompt"], it["answer"]) for it in items] == \
        [(c["idx"], c["query"], c["prompt"], c["answer"]) for c in raw_cases]
    reqs = LBC.judge_requests(items, {it["id"]: "my answer" for it in items}, run=0, few_shots=shots)
    for req, case in zip(reqs, raw_cases):
        # official eval.py: few_shots[idx - 1] are this question's three rated examples
        assert all(f"{s['answer']}\n[Assistant's answer ends]\n\nRating: [[{s['score']}]]" in req.prompt
                   for s in raw_shots[case["idx"] - 1])
        assert case["query"] in req.prompt and case["answer"] in req.prompt


def test_longbench_reads_every_judged_dataset():
    official = paths.shared_data("longbench")
    for name, task in LB.DATASET_TASK.items():
        row = json.loads((FIXTURES / "longbench" / "data" / f"{name}.jsonl").read_text())
        [item] = LB.load_dataset(FIXTURES / "longbench", name)
        assert (item["task"], item["question"], item["answers"]) == (task, row["input"], row["answers"])
        if official is not None:  # the shipped prompts and budgets against LongBench's own config files
            prompt = json.loads((official / "dataset2prompt.json").read_text())[name]
            assert item["prompt"] == prompt.format(context=row["context"], input=row["input"])
            assert item["max_new_tokens"] == json.loads((official / "dataset2maxlen.json").read_text())[name]


def test_longalpaca_loader_reads_official_json():
    raw = json.loads((FIXTURES / "longalpaca" / "LongAlpaca-12k.json").read_text())
    rows = sharegpt.load_longalpaca(FIXTURES / "longalpaca" / "LongAlpaca-12k.json")
    assert [[m["content"] for m in r["messages"]] for r in rows] == [[x["instruction"], x["output"]] for x in raw]


def test_mtbench_reads_fastchat_layout():
    root = FIXTURES / "mtbench"
    raw = [json.loads(line) for line in (root / "mt_bench" / "question.jsonl").read_text().splitlines()]
    questions, refs, prompts = MT.load_questions(root), MT.load_reference_answers(root), MT.load_judge_prompts(root)
    assert [q["question_id"] for q in questions] == [q["question_id"] for q in raw]
    assert set(refs) == {111} and {"single-v1", "single-math-v1-multi-turn"} <= set(prompts)
    answers = {str(q["question_id"]): ["first answer", "second answer"] for q in questions}
    reqs = MT.judge_requests(questions, answers, prompts, refs)
    math_reqs = [r for r in reqs if "111" in str(r.item_id)]
    assert len(reqs) == 4 and refs[111][0] in math_reqs[0].prompt  # math is graded against GPT-4's reference


# ----------------------------------------------------------------------------- judges through the fake server


def paper_responder(messages: list[dict[str, str]]) -> str:
    """Judge prompts get a fixed in-scale rating; Self-Instruct prompts the grounded generator's reply."""
    if any("[[rating]]" in m["content"] for m in messages):
        return f"The answer is partly correct.\n\nRating: [[{JUDGE_RATING}]]"
    return grounded_responder(messages)


@pytest.fixture
def paper_api(fake_api, monkeypatch, tmp_path):  # noqa: F811 — the fixture imported above
    """A fake Anthropic + OpenAI server reached through the SDKs' own base-URL variables, with fake keys.

    API responses are cached in a fresh folder (every call must reach the server, and no fake answer may
    reach the real cache); the tokenizer and converted-model caches are shared by links (built once).
    """
    real, cache = paths.cache(), tmp_path / "cache"
    for sub in ("models", "tokenizers"):
        (real / sub).mkdir(parents=True, exist_ok=True)
        (cache / sub).parent.mkdir(parents=True, exist_ok=True)
        (cache / sub).symlink_to(real / sub, target_is_directory=True)
    monkeypatch.setenv("LONGALIGN_CACHE", str(cache))
    api = fake_api(responder=paper_responder)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.anthropic_base_url)
    monkeypatch.setenv("OPENAI_BASE_URL", api.openai_base_url)
    for env, key in FAKE_KEYS.items():
        monkeypatch.setenv(env, key)
    return api


@pytest.mark.parametrize("kind,model", [("openai", "gpt-4-1106-preview"), ("openai", "gpt-4"),
                                        ("anthropic", "claude-2.1"), ("anthropic", "claude-3-opus-20240229")])
def test_judge_with_paper_model_names(paper_api, kind, model, tmp_path):
    items = LBC.load_test_cases(FIXTURES / "longbench_chat" / "test_cases.json")
    shots = LBC.load_few_shots(FIXTURES / "longbench_chat" / "few_shots.json")
    judge = J.Judge(kind, model, concurrency=2, max_cost_usd=1.0)
    reqs = lambda run: LBC.judge_requests(items, {it["id"]: "an answer" for it in items}, run=run, few_shots=shots)  # noqa: E731
    J.judge_sweep(judge, reqs, benchmark="longbench_chat", model_tag="m", runs=2)
    scores = J.summarise(records.load_records(paths.results_dir("longbench_chat") / judge.name))
    assert float(scores["score"].iloc[0]) == JUDGE_RATING
    sent = [r for r in paper_api.requests if r["kind"] == kind]
    assert len(sent) == 2 * len(items) and {r["model"] for r in sent} == {model}
    key = FAKE_KEYS[f"{kind.upper()}_API_KEY"]
    assert all(key in (r["headers"]["x-api-key"] or "") + (r["headers"]["authorization"] or "") for r in sent)
    assert_no_key_in(paths.outputs(), paths.cache())


def assert_no_key_in(*folders: Path) -> None:
    """No file under ``folders`` holds either fake key."""
    for folder in folders:
        for path in (p for p in Path(folder).rglob("*") if p.is_file()):
            data = path.read_bytes()
            assert not any(k.encode() in data for k in FAKE_KEYS.values()), f"an API key leaked into {path}"


# ----------------------------------------------------------------------------- lm-eval-harness for our checkpoints

# lm_eval's documented CLI flags (lm-evaluation-harness docs/interface.md) and the hf model's arguments used here
LM_EVAL_FLAGS = {"--model", "--model_args", "--tasks", "--num_fewshot", "--batch_size", "--device", "--output_path"}
HF_MODEL_ARGS = {"pretrained", "dtype", "trust_remote_code"}


def check_lm_eval_command(argv: list[str], checkpoint: Path) -> dict[str, str]:
    """Flags of one command checked against lm_eval's parser (or its documented flags); returns them."""
    assert argv[0] == "lm_eval" and shlex.split(harness.shell_line(argv)) == argv
    try:
        from lm_eval.__main__ import setup_parser
    except ImportError:  # not installed here: the documented interface instead
        flags = dict(zip(argv[1::2], argv[2::2]))
        assert set(flags) <= LM_EVAL_FLAGS and len(argv) == 1 + 2 * len(flags), argv
    else:
        flags = {f"--{k}": str(v) for k, v in vars(setup_parser().parse_args(argv[1:])).items() if v is not None}
    model_args = dict(kv.split("=", 1) for kv in flags["--model_args"].split(","))
    assert flags["--model"] == "hf" and set(model_args) <= HF_MODEL_ARGS
    assert Path(model_args["pretrained"]) == checkpoint
    return flags


def check_harness_for_checkpoint(checkpoint: Path, tag: str) -> None:
    """Every leaderboard task once, with its few-shot count, on a checkpoint the hf model can load."""
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)  # what lm_eval's hf model loads
    argvs = harness.lm_eval_commands(str(checkpoint), tag)
    flags = [check_lm_eval_command(argv, checkpoint) for argv in argvs]
    expected = {"arc_challenge": "25", "hellaswag": "10", "truthfulqa_mc2": "0", "mmlu": "5"}  # Open LLM Leaderboard v1
    assert {f["--tasks"]: f["--num_fewshot"] for f in flags} == expected
    assert len({f["--output_path"] for f in flags}) == len(flags)
    assert all(Path(f["--output_path"]).is_relative_to(paths.results_dir("harness-raw") / tag) for f in flags)


def save_tiny_base(dest: Path) -> Path:
    """A tiny Llama with the cpu tokenizer saved as an HF folder: the stand-in for the paper's base model."""
    tok = models.cpu_tokenizer()
    model = models.tiny_llama(models.tiny_llama_config(len(tok), hidden=32, layers=1, heads=2, max_position=1024))
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def test_harness_command_for_saved_checkpoint(tmp_path):
    check_harness_for_checkpoint(save_tiny_base(tmp_path / "ckpt"), "ckpt")


# ----------------------------------------------------------------------------- the notebooks, end to end


def write_corpus(dest: Path, n: int = 24, max_chars: int | None = None) -> Path:
    """A JSONL corpus ({id, title, text} rows, the paper's corpus format) of stdlib sources, cut to ``max_chars``."""
    docs = [d for _, d in zip(range(n), corpus.stdlib_source())]
    records.write_jsonl(dest, [{"id": d["id"], "title": d["title"], "text": d["text"][:max_chars]} for d in docs])
    return dest


def run_notebooks(profile: dict[str, dict[str, Any]], out_dir: Path) -> None:
    """Every numbered notebook in order with its section, as scripts/run_notebooks.py runs them."""
    import papermill as pm

    for nb in sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        start = time.perf_counter()
        pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=profile[nb.stem], cwd=str(paths.NOTEBOOKS),
                            kernel_name="python3", progress_bar=False, log_output=False)
        print(f"{nb.name}: {time.perf_counter() - start:.0f} s")  # shown with -s or on failure


def check_training_records(outputs: Path, names: list[str]) -> None:
    """Each run: 2 ranks under the paper's DeepSpeed config, bf16, chunked CE, finite losses, a checkpoint."""
    for name in names:
        rec = records.read_record(outputs / "runs" / f"{name}.json")
        cfg = rec["config"]
        assert rec["world_size"] == 2, name
        assert Path(cfg["deepspeed"]).resolve() == (paths.ROOT / "configs" / "deepspeed" / "zero3_offload.json").resolve()
        assert cfg["bf16"] is True and cfg["gradient_checkpointing"] is True and cfg["ce_chunk_size"] == 4096, name
        assert all(math.isfinite(r["loss_token"]) for r in rec["log"]) and rec["steps"] > 0, name
        assert (outputs / rec["checkpoints"][-1]["path"] / "config.json").is_file(), name


@pytest.mark.slow
def test_paper_profile_end_to_end(tmp_path, paper_api, monkeypatch):
    work, outputs, executed = tmp_path / "work", tmp_path / "outputs", tmp_path / "executed"
    executed.mkdir()
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(outputs))
    save_tiny_base(work / "tiny-base")
    # 01 samples documents under its window (the paper's overlong: skip), so its corpus is short; 02's
    # pretraining text must hold held-out windows of the long length
    write_corpus(work / "corpus" / "docs.jsonl", max_chars=1200)
    write_corpus(work / "pretraining" / "docs.jsonl")
    tiny = tiny_paper_profile(work)
    run_notebooks(tiny, executed)

    # 01: Self-Instruct through the Anthropic wire format under the paper's model name
    anthropic = [r for r in paper_api.requests if r["kind"] == "anthropic"]
    assert anthropic and {r["model"] for r in anthropic} == {"claude-2.1"}
    assert all((outputs / "data" / f"mix-{s}.jsonl").is_file() for s in sharegpt.SUITES)
    # 02 / 03 / 06: DeepSpeed ZeRO-3 + CPU offload, 2 processes, bf16
    check_training_records(outputs, ["ctx-long-rope-seed0"])  # one seed, and same_base_ablation is off in the paper profile
    paper03 = config.load_profile("paper")["03_training_methods"]
    runs03 = [f"{m}-seed0" for m in paper03["methods"]] + [f"{s}-packing_weighted-seed0" for s in paper03["suites"]
                                                           if s != paper03["suite"]]
    check_training_records(outputs, runs03)
    check_training_records(outputs, [f"scale-{v['name']}" for v in load_overrides()["06_scaling"]["variants"]])
    base, extended = (AutoConfig.from_pretrained(p) for p in (work / "tiny-base", outputs / "models" / extended_name()))
    assert context.rope_base(extended) == pytest.approx(200.0 * context.rope_base(base))  # Sec. 4.1: base x200
    # 04 / 05 / 07: every judge call in the OpenAI wire format under the paper's judge name
    openai = [r for r in paper_api.requests if r["kind"] == "openai"]
    assert openai and {r["model"] for r in openai} == {tiny["07_longbench_chat"]["judge_model"]}
    table = (outputs / "results" / "tables" / "07_benchmarks.csv").read_text()
    assert all(col in table for col in ("LongBench-Chat", "Single-Doc QA", "Summarization", "MT-Bench"))
    assert not re.search(r"stand-in", table)
    # the lm-eval-harness command for our own final checkpoint of notebook 03
    rec = records.read_record(outputs / "runs" / "packing_weighted-seed0.json")
    check_harness_for_checkpoint(outputs / rec["checkpoints"][-1]["path"], "packing_weighted-seed0")
    assert_no_key_in(outputs, executed, tmp_path / "cache")
