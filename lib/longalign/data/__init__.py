"""Long instruction data construction (paper §3.2, appendix A) and the short/long training mixtures.

``corpus`` long-document sources, dedupe and length sampling; ``selfinstruct`` the four task-type
prompts, question parsing and the resumable generation pipeline; ``grounded`` the offline stand-in
for Claude; ``sharegpt`` short chat data, suites and the held-out long-QA set; ``build`` notebook 01's
steps.
"""
