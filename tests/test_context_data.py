"""Notebook 02's inputs: the user's corpus through the shared reader, the paper's token budget, a released extended base."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from longalign import context, models
from longalign.data import corpus
from longalign.records import DataError
from longalign.train import resolve_model


def test_paper_token_budget_gives_the_step_count():
    # Sec. 4.1: 10B tokens; 8 GPUs x 1 pack of 65,536 tokens per step -> 10e9 / 524,288 = 19,073.49 -> 19,074 steps
    assert context.steps_for_tokens(10_000_000_000, 65_536, 1, 8) == 19_074
    assert context.steps_for_tokens(4096, 1024, 2, 2) == 1 and context.steps_for_tokens(4097, 1024, 2, 2) == 2
    with pytest.raises(ValueError, match="must be > 0"):
        context.steps_for_tokens(0, 65_536, 1, 8)


def test_long_steps_come_from_the_steps_or_the_token_budget():
    assert context.long_steps_for(24, None, 2048, 1, 1) == 24 and context.long_steps_for(24, 10**9, 2048, 1, 1) == 24
    assert context.long_steps_for(None, 10_000_000_000, 65_536, 1, 8) == 19_074
    with pytest.raises(ValueError, match="long_steps and long_tokens are both None"):
        context.long_steps_for(None, None, 2048, 1, 1)


def test_corpus_texts_read_the_users_folder_dedupe_and_cap(tmp_path):
    (tmp_path / "a.txt").write_text("alpha " * 50, encoding="utf-8")
    rows = [{"text": "beta " * 50}, {"text": "alpha " * 50}, {"text": "gamma " * 50}]  # the 2nd repeats a.txt
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "scan.pdf").write_bytes(b"%PDF")
    skips = corpus.Skips()
    texts = context.corpus_texts([str(tmp_path)], max_chars=10**9, skips=skips)
    assert texts == ["alpha " * 50, "beta " * 50, "gamma " * 50]
    assert dict(skips) == {"duplicate_exact": 1, "unsupported_file": 1}
    assert context.corpus_texts([str(tmp_path)], max_chars=400) == ["alpha " * 50, "beta " * 50]  # 300 + 250 >= 400


def test_corpus_texts_with_nothing_usable_names_the_source(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no documents for continual pretraining.*empty: 1"):
        context.corpus_texts([str(tmp_path)], max_chars=1000, skips=corpus.Skips())


def test_released_base_is_linked_where_notebook_03_looks(tmp_path):
    released = tmp_path / "LongAlign-7B-64k-base"
    models.tiny_llama_config(64, hidden=16, layers=1, heads=2, rope_theta=2_000_000.0).save_pretrained(released)
    outputs = tmp_path / "outputs"
    dest = context.link_released_base(str(released), outputs / "models" / "llama-2-7b-64k")
    assert resolve_model("llama-2-7b-64k", outputs) == str(dest)
    assert context.rope_base(AutoConfig.from_pretrained(resolve_model("llama-2-7b-64k", outputs))) == 2_000_000.0
    assert context.link_released_base(str(released), dest) == dest  # a rerun keeps the link
    other = tmp_path / "other"
    models.tiny_llama_config(64, hidden=16, layers=1, heads=2).save_pretrained(other)
    with pytest.raises(FileExistsError, match="already holds another model"):
        context.link_released_base(str(other), dest)
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        context.link_released_base(str(tmp_path / "not-a-model"), outputs / "models" / "x")


@pytest.mark.slow
def test_notebook_02_with_a_released_base_trains_nothing_and_hands_it_to_03(tmp_path, monkeypatch):
    import papermill as pm

    from longalign import config, paths, records

    released = tmp_path / "LongAlign-7B-64k-base"
    models.tiny_llama_config(64, hidden=16, layers=1, heads=2, rope_theta=2_000_000.0).save_pretrained(released)
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(outputs))
    params = {**config.notebook_params("test", "02_context_extension"), "released_base": str(released),
              "extended_name": "llama-2-7b-64k"}
    pm.execute_notebook(str(paths.NOTEBOOKS / "02_context_extension.ipynb"), str(tmp_path / "02.ipynb"), parameters=params,
                        cwd=str(paths.NOTEBOOKS), progress_bar=False)  # the kernel the notebook names
    assert not (outputs / "runs").exists()  # no pretraining run at all
    assert resolve_model("llama-2-7b-64k", outputs) == str(outputs / "models" / "llama-2-7b-64k")
    handoff = records.read_record(outputs / "results" / "context" / "handoff-llama-2-7b-64k.json")
    assert handoff["released"] and handoff["from"] == str(released) and handoff["rope_base"] == 2_000_000.0


def test_pretrain_rows_streamed_to_arrow_equal_the_in_memory_rows(tmp_path):
    tok = models.cpu_tokenizer()
    texts = ["hello world " * 120, "short", "another document, a bit longer. " * 30] * 50  # 150 texts: 3 batches of 64
    memory = context.pretrain_dataset(texts, tok, max_len=64, min_len=4)
    disk = context.pretrain_dataset(iter(texts), tok, max_len=64, min_len=4, path=tmp_path / "tok" / "pretrain.arrow")
    assert disk.to_dict() == memory.to_dict() and len(disk) > 150
    # the reference: per document, ids + EOS cut into 64-token pieces, pieces under 4 tokens dropped
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    assert memory["input_ids"] == [p for d in ids for p in (d[s:s + 64] for s in range(0, len(d), 64)) if len(p) >= 4]
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["pretrain.arrow"]  # no temporary file left
    with pytest.raises(ValueError, match="no document yields"):
        context.pretrain_dataset(["x"], tok, max_len=64, min_len=4, path=tmp_path / "empty.arrow")
    assert not (tmp_path / "empty.arrow").exists() and not (tmp_path / "empty.arrow.tmp").exists()


def test_paper_profile_extends_on_the_users_corpus_with_the_papers_budget():
    from longalign import config

    p = config.load_profile("paper")["02_context_extension"]
    assert p["sources"] and p["long_steps"] is None and p["released_base"] is None and p["same_base_ablation"] is False
    steps = context.steps_for_tokens(p["long_tokens"], p["long_len"], p["long_batch"], p["launch_nproc"])
    assert p["long_tokens"] == 10_000_000_000 and steps == 19_074  # Sec. 4.1: 10B tokens at 64k on 8 GPUs
    for profile in ("cpu", "test"):  # the offline stand-in stays the cpu default
        assert config.load_profile(profile)["02_context_extension"]["sources"] == []
