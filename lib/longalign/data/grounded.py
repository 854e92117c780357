"""Offline stand-in for Claude: a deterministic generator of GROUNDED long-context tasks (English and Chinese).

:func:`grounded_responder` is an ``offline_fn`` for :class:`longalign.llm.LLMClient`. Given one of the
four appendix-A question prompts it proposes 5 questions *derived from the document itself* in the
``1: ... 2: ...`` format; given ``document + "\\n\\n" + question`` it computes the answer from the
document. Every question comes from a template whose answer is a span, fact, count or position in
the text, so answers are verifiably correct: quote the line containing a rare phrase, give the
sentence that follows a quoted sentence, count a word, say which of two phrases comes first,
compare two counts, give line numbers, list headings / the lines mentioning a word, quote the first
and last sentences. This is NOT Claude: it gives the cpu profile real long-context supervision
(the answer needs information from anywhere in the document) without any API.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable

Doc = str
# name -> (English template, Chinese template); {a}/{b} are quoted spans, {k} a small integer
TEMPLATES: dict[str, tuple[str, str]] = {
    "quote_line": ('Quote the line of the text that contains the phrase "{a}".', "请引用文中包含短语“{a}”的那一行。"),
    "next_sentence": ('Which sentence immediately follows the sentence "{a}" in the text?', "文中“{a}”这句话的下一句是什么？"),
    "count_word": ('How many times does the word "{a}" occur in the text?', "“{a}”在文中出现了多少次？"),
    "which_first": ('Which appears first in the text: "{a}" or "{b}"?', "“{a}”和“{b}”，哪一个在文中先出现？"),
    "line_gap": ('What is the difference between the line numbers of the line containing "{a}" and the line containing "{b}"?',
                 "包含“{a}”的行与包含“{b}”的行，行号相差多少？"),
    "compare_counts": ('Which word occurs more often in the text: "{a}" or "{b}"?', "“{a}”和“{b}”，哪一个在文中出现的次数更多？"),
    "line_number": ('On which line (counting from 1) does the phrase "{a}" appear?', "短语“{a}”出现在第几行（从1开始计数）？"),
    "lines_with_word": ('List, in order, every line of the text that contains the word "{a}".', "请按顺序列出文中所有包含“{a}”的行。"),
    "first_last": ("Summarize how the text opens and closes by quoting its first and last sentences.",
                   "请引用全文的第一句和最后一句，概括文本的开头与结尾。"),
    "headings": ("List the first {k} section headings of the text, in order.", "请按顺序列出文中的前{k}个章节标题。"),
    "definitions": ("List the names of the first {k} top-level functions or classes defined in the text, in order.",
                    "请按顺序列出文中定义的前{k}个顶层函数或类的名称。"),
    "first_line": ("What is the first line of the text?", "文本的第一行是什么？"),
}
TASK_TEMPLATES: dict[str, tuple[str, ...]] = {
    "general": ("quote_line", "next_sentence", "count_word", "which_first", "headings", "definitions", "line_number"),
    "summary": ("first_last", "lines_with_word", "headings", "definitions", "quote_line"),
    "reasoning": ("which_first", "line_gap", "compare_counts", "count_word", "next_sentence"),
    "extraction": ("quote_line", "next_sentence", "line_number", "count_word", "definitions", "headings"),
}
MAX_QUOTE = 300  # characters: quoted answers stay short, so document + question + answer fit max_len
_FORBIDDEN = re.compile(r'["“”\n]|\d\s*[:：]')  # quotes would break the question; "3:" would look like numbering


# ---- text structure --------------------------------------------------------------------------
def lines(doc: Doc) -> list[str]:
    """All lines (numbering counts from 1 and includes blank lines)."""
    return doc.split("\n")


def sentences(doc: Doc) -> list[str]:
    """Sentences: split after . ! ? followed by whitespace, or after 。！？; at least 10 characters."""
    parts = re.split(r"(?<=[.!?])\s+|(?<=[。！？])", doc)
    return [p.strip() for p in parts if len(p.strip()) >= 10]


def headings(doc: Doc) -> list[str]:
    """Markdown (#) headings and reStructuredText titles (a line underlined with = - ~ ^ *); none in code."""
    out, ls = [], lines(doc)
    if definitions(doc) or re.search(r"(?m)^(?:import|from)\s+\w", doc):
        return out  # in code, "#" starts a comment and "----" rules are decoration: no headings
    for i, line in enumerate(ls):
        md = re.match(r"#{1,6}\s+(\S.*)", line)
        under = i + 1 < len(ls) and re.fullmatch(r"([=\-~^*])\1{2,}", ls[i + 1].strip() or "x")
        if md:
            out.append(md.group(1).strip())
        elif under and line.strip() and len(ls[i + 1].strip()) >= len(line.strip()) and not re.fullmatch(r"[=\-~^*]+", line.strip()):
            out.append(line.strip())
    return out


def definitions(doc: Doc) -> list[str]:
    """Names of top-level ``def`` / ``class`` statements (code documents)."""
    return re.findall(r"(?m)^(?:async\s+def|def|class)\s+([A-Za-z_]\w*)", doc)


def count_word(doc: Doc, word: str) -> int:
    """Occurrences of ``word``: whole-word matches for Latin words, substring count for CJK."""
    if re.search(r"[\u4e00-\u9fff]", word):
        return doc.count(word)
    return len(re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", doc))


def first_line_with(doc: Doc, span: str) -> int:
    """1-based number of the first line containing ``span``."""
    return next(i for i, line in enumerate(lines(doc), start=1) if span in line)


# ---- picking spans for questions -------------------------------------------------------------
def _phrase(doc: Doc, rng: random.Random, lang: str) -> str | None:
    """A short span that occurs exactly once in the document."""
    cands = [line for line in lines(doc) if len(line.strip()) >= 12]
    for _ in range(30):
        if not cands:
            return None
        line = rng.choice(cands).strip()
        if lang == "zh":
            start = rng.randrange(max(1, len(line) - 8))
            span = line[start:start + 8].strip()
        else:
            words = line.split()
            start = rng.randrange(max(1, len(words) - 3))
            span = " ".join(words[start:start + 4])
        if len(span) >= 6 and not _FORBIDDEN.search(span) and doc.count(span) == 1:
            return span
    return None


def _word(doc: Doc, rng: random.Random, lang: str, lo: int = 2, hi: int = 40) -> str | None:
    """A word (a CJK bigram for Chinese) occurring between ``lo`` and ``hi`` times."""
    pattern = r"[\u4e00-\u9fff]{2}" if lang == "zh" else r"(?<!\w)[A-Za-z]{5,}(?!\w)"
    cands = sorted(set(re.findall(pattern, doc)))
    rng.shuffle(cands)
    return next((w for w in cands[:400] if lo <= count_word(doc, w) <= hi), None)


def _sentence(doc: Doc, rng: random.Random) -> str | None:
    """A unique, single-line sentence of reasonable length followed by a sentence short enough to quote."""
    sents = sentences(doc)
    cands = [s for s, nxt in zip(sents, sents[1:]) if 15 <= len(s) <= 200 and len(nxt) <= MAX_QUOTE
             and not _FORBIDDEN.search(s) and doc.count(s) == 1]
    return rng.choice(cands) if cands else None


# ---- question generators: doc, rng, lang -> slots or None --------------------------------------
def _q_one_phrase(doc, rng, lang):
    a = _phrase(doc, rng, lang)
    return {"a": a} if a else None


def _q_two_phrases(doc, rng, lang):
    a, b = _phrase(doc, rng, lang), _phrase(doc, rng, lang)
    return {"a": a, "b": b} if a and b and a != b and first_line_with(doc, a) != first_line_with(doc, b) else None


def _q_word(doc, rng, lang):
    a = _word(doc, rng, lang, 3 if lang == "zh" else 2)
    return {"a": a} if a else None


def _q_two_words(doc, rng, lang):
    a, b = _word(doc, rng, lang), _word(doc, rng, lang, 2, 60)
    return {"a": a, "b": b} if a and b and count_word(doc, a) != count_word(doc, b) else None


def _q_lines_word(doc, rng, lang):
    a = _word(doc, rng, lang, 2, 5)
    short = a and all(len(line) <= MAX_QUOTE for line in lines(doc) if count_word(line, a))
    return {"a": a} if short and not _FORBIDDEN.search(a) else None


def _q_first_last(doc, rng, lang):
    s = sentences(doc)
    return {} if len(s) >= 2 and len(s[0]) <= MAX_QUOTE and len(s[-1]) <= MAX_QUOTE else None


def _q_sentence(doc, rng, lang):
    a = _sentence(doc, rng)
    return {"a": a} if a else None


def _q_k(items_fn):
    def gen(doc, rng, lang):
        n = len(items_fn(doc))
        return {"k": min(n, rng.randint(2, 5))} if n >= 2 else None
    return gen


GENERATORS: dict[str, Callable] = {
    "quote_line": _q_one_phrase, "line_number": _q_one_phrase, "which_first": _q_two_phrases,
    "line_gap": _q_two_phrases, "count_word": _q_word, "compare_counts": _q_two_words,
    "lines_with_word": _q_lines_word, "next_sentence": _q_sentence,
    "first_last": _q_first_last,
    "headings": _q_k(headings), "definitions": _q_k(definitions),
    "first_line": lambda doc, rng, lang: {} if doc.strip() else None,
}


def propose_questions(doc: Doc, task_type: str, lang: str, n: int = 5) -> list[str]:
    """Up to ``n`` distinct grounded questions of ``task_type`` (deterministic for the document)."""
    rng = random.Random(hashlib.sha256(f"{task_type}|{doc}".encode()).hexdigest())
    names, out = TASK_TEMPLATES[task_type], []
    for attempt in range(8 * n):
        name = names[attempt % len(names)] if attempt < len(names) else rng.choice(names)
        slots = GENERATORS[name](doc, rng, lang)
        if slots is not None:
            q = TEMPLATES[name][lang == "zh"].format(**slots)
            out += [q] if q not in out else []
        if len(out) >= n:
            break
    return out or [TEMPLATES["first_line"][lang == "zh"]]


# ---- answering -----------------------------------------------------------------------------------
def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{a\}", "(?P<a>.+?)").replace(r"\{b\}", "(?P<b>.+?)")
    return re.compile("^" + pattern.replace(r"\{k\}", r"(?P<k>\d+)") + "$")


_REGEXES = [(name, lang, _template_regex(t)) for name, pair in TEMPLATES.items() for lang, t in zip(("en", "zh"), pair)]


def answer_question(doc: Doc, question: str) -> str | None:
    """The grounded answer to a templated question, computed from ``doc``; None if it is not one of ours."""
    for name, lang, regex in _REGEXES:
        m = regex.match(question.strip())
        if m:
            slots = {k: v for k, v in m.groupdict().items() if v is not None}
            try:
                return SOLVERS[name](doc, lang, **slots)
            except (StopIteration, ValueError, IndexError):
                return None
    return None


def _s_quote_line(doc, lang, a):
    line = lines(doc)[first_line_with(doc, a) - 1].strip()
    return f'The line is: "{line}"' if lang == "en" else f"该行是：“{line}”"


def _s_next_sentence(doc, lang, a):
    sents = sentences(doc)
    nxt = sents[sents.index(a) + 1]
    return f'The next sentence is: "{nxt}"' if lang == "en" else f"下一句是：“{nxt}”"


def _s_count(doc, lang, a):
    n = count_word(doc, a)
    return f'The word "{a}" occurs {n} times in the text.' if lang == "en" else f"“{a}”在文中出现了{n}次。"


def _s_which_first(doc, lang, a, b):
    first, second = (a, b) if doc.index(a) < doc.index(b) else (b, a)
    return f'"{first}" appears first, before "{second}".' if lang == "en" else f"“{first}”先出现，在“{second}”之前。"


def _s_line_gap(doc, lang, a, b):
    la, lb = first_line_with(doc, a), first_line_with(doc, b)
    if lang == "en":
        return f'"{a}" is on line {la} and "{b}" is on line {lb}, so the line numbers differ by {abs(la - lb)}.'
    return f"“{a}”在第{la}行，“{b}”在第{lb}行，行号相差{abs(la - lb)}。"


def _s_compare(doc, lang, a, b):
    na, nb = count_word(doc, a), count_word(doc, b)
    more = a if na > nb else b
    if lang == "en":
        return f'"{a}" occurs {na} times and "{b}" occurs {nb} times, so "{more}" occurs more often.'
    return f"“{a}”出现{na}次，“{b}”出现{nb}次，所以“{more}”出现得更多。"


def _s_line_number(doc, lang, a):
    n = first_line_with(doc, a)
    return f'The phrase "{a}" appears on line {n}.' if lang == "en" else f"短语“{a}”出现在第{n}行。"


def _s_lines_with_word(doc, lang, a):
    hits = [line.strip() for line in lines(doc) if count_word(line, a)]
    return "\n".join(f"{i}. {line}" for i, line in enumerate(hits, start=1))


def _s_first_last(doc, lang):
    s = sentences(doc)
    return f'The text opens with "{s[0]}" and closes with "{s[-1]}"' if lang == "en" else f"全文以“{s[0]}”开头，以“{s[-1]}”结尾。"


def _s_list(items_fn):
    def solve(doc, lang, k):
        return "\n".join(f"{i}. {h}" for i, h in enumerate(items_fn(doc)[: int(k)], start=1))
    return solve


def _s_first_line(doc, lang):
    line = next(line.strip() for line in lines(doc) if line.strip())
    return f'The first line is: "{line}"' if lang == "en" else f"第一行是：“{line}”"


SOLVERS: dict[str, Callable] = {
    "quote_line": _s_quote_line, "next_sentence": _s_next_sentence, "count_word": _s_count,
    "which_first": _s_which_first, "line_gap": _s_line_gap, "compare_counts": _s_compare,
    "line_number": _s_line_number, "lines_with_word": _s_lines_with_word, "first_last": _s_first_last,
    "headings": _s_list(headings), "definitions": _s_list(definitions), "first_line": _s_first_line,
}


def grounded_responder(messages: list[dict[str, str]]) -> str:
    """``offline_fn``: 5 numbered grounded questions for a question prompt, else the grounded answer."""
    from longalign.data.selfinstruct import PROMPTS  # late import: selfinstruct does not depend on this module

    user = messages[-1]["content"]
    for lang, prompts in PROMPTS.items():
        for task_type, instruction in prompts.items():
            if user.endswith("\n\n" + instruction):
                qs = propose_questions(user[: -len(instruction) - 2], task_type, lang)
                return "\n".join(f"{i}: {q}" for i, q in enumerate(qs, start=1))
    doc, _, question = user.rpartition("\n\n")
    answer = answer_question(doc, question)
    return answer if answer else "The text does not contain enough information to answer this question."
