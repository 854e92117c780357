#!/usr/bin/env bash
# The whole test suite: unit tests, multi-process (gloo) and DeepSpeed ZeRO-3 CPU tests, and every
# notebook executed under nbval with the tiny `test` profile. Sets up the environment first.
#   ./run_tests.sh                # everything (~6.5-10 min of tests on an idle 2-core machine, by its speed; up to ~18 under heavy load)
#   ./run_tests.sh -m "not slow"  # quick unit tests only (extra args go to pytest)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash scripts/setup_env.sh
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 DS_ACCELERATOR=cpu
work="$(mktemp -d "${TMPDIR:-/tmp}/longalign-tests.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# Notebooks write into one shared outputs folder so 03 can read 01's data, 05 can read 03's runs.
export LONGALIGN_OUTPUTS="$work/outputs"
.venv/bin/python scripts/prepare_notebook_tests.py "$work/notebooks" --profile test
.venv/bin/python -m pytest tests "$work/notebooks" --nbval-lax --nbval-cell-timeout=900 \
  -p no:cacheprovider "$@"
