#!/usr/bin/env bash
# Main job: set up the environment, then run every notebook (or a subset) headless with papermill.
#   ./run_all.sh                 # cpu profile, all notebooks, figures into outputs/figures/
#   ./run_all.sh --profile paper # the 8-GPU reproduction (see README)
#   ./run_all.sh --profile cpu-long # longer cpu training for findings 2 and 5, into outputs-cpu-long/ (48 min)
#   ./run_all.sh 00 03           # only notebooks whose names start with 00 or 03
# Shows each notebook's progress, ends with a table of times and figures and writes outputs/INDEX.md.
# Arguments are checked first: a bad one stops the script before anything is installed or written.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
usage() { echo "usage: ./run_all.sh [--profile cpu|cpu-long|paper|test] [notebook prefix ...]" >&2; exit 2; }
profile=cpu
prefixes=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || usage; profile="$2"; shift 2 ;;
    --profile=*) profile="${1#--profile=}"; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    -*) echo "run_all.sh: unknown option '$1'" >&2; usage ;;
    *) prefixes+=("$1"); shift ;;
  esac
done
if [[ ! "$profile" =~ ^[A-Za-z0-9_-]+$ ]] || [ ! -f "configs/$profile.yaml" ]; then
  echo "run_all.sh: no profile '$profile' (configs/$profile.yaml); known: cpu, cpu-long, paper, test" >&2; exit 2
fi
for prefix in "${prefixes[@]}"; do
  found=0
  for nb in notebooks/[0-9][0-9]_*.ipynb; do
    [[ "$(basename "$nb")" == "$prefix"* ]] && found=1
  done
  [ "$found" = 1 ] || { echo "run_all.sh: no notebook matches '$prefix' (see notebooks/)" >&2; exit 2; }
done
bash scripts/setup_env.sh
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
py="${LONGALIGN_VENV:-.venv}/bin/python"
# configs/<profile>.yaml is the one place to edit: bring its per-notebook papermill files up to date.
"$py" scripts/write_param_files.py --profile "$profile"
exec "$py" scripts/run_notebooks.py --profile "$profile" "${prefixes[@]}"
