#!/usr/bin/env bash
# Main job: set up the environment, then run every notebook (or a subset) headless with papermill.
#   ./run_all.sh                 # cpu profile, all notebooks, figures into outputs/figures/
#   ./run_all.sh --profile paper # the 8-GPU reproduction (see README)
#   ./run_all.sh 00 03           # only notebooks whose names start with 00 or 03
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bash scripts/setup_env.sh
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec .venv/bin/python scripts/run_notebooks.py "$@"
