"""Write ``configs/<profile>/<notebook>.yaml`` (one papermill ``-f`` file per notebook) from ``configs/<profile>.yaml``.

The profile files stay the one place to edit; run this after changing one of them:
    python scripts/write_param_files.py          # rewrite stale files, print what changed
    python scripts/write_param_files.py --check  # exit 1 listing stale files, write nothing
"""

from __future__ import annotations

import argparse
import sys

from longalign import config, profiles


def main() -> int:
    """Regenerate (or check) the per-notebook parameter files; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    parser.add_argument("--profile", action="append", choices=config.PROFILES, help="default: every profile")
    args = parser.parse_args()
    chosen = tuple(args.profile or config.PROFILES)
    if args.check:
        stale = profiles.stale_param_files(chosen)
        for rel in stale:
            print(f"stale: configs/{rel}", file=sys.stderr)
        if stale:
            print(f"write_param_files: {len(stale)} stale; run `{profiles.REGENERATE}`", file=sys.stderr)
        return 1 if stale else 0
    changed = profiles.write_param_files(chosen)
    for rel in changed:
        print(f"write_param_files: wrote configs/{rel}")  # silent when everything was already current
    return 0


if __name__ == "__main__":
    sys.exit(main())
