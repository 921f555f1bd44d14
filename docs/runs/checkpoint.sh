#!/bin/bash
# Copy a run folder's finished files (gzipped JSON; no plots, claims or reports) into docs/runs/NAME
# and commit them, so that a new machine can resume the run (see README.md here).
#   bash docs/runs/checkpoint.sh NAME [RUNS_DIR]      # RUNS_DIR defaults to ~/mechunlearn-runs
set -e
name=$1; src=${2:-$HOME/mechunlearn-runs}/$name
repo=$(cd "$(dirname "$0")/../.." && pwd); dst=$repo/docs/runs/$name
[ -d "$src/cells" ] || { echo "no run folder at $src" >&2; exit 2; }
mkdir -p "$dst"
cd "$src"
for f in config.json data.json known/*.json localizations/*.json cells/*.json; do
  [ -f "$f" ] || continue
  mkdir -p "$dst/$(dirname "$f")"
  # a finished file never changes; data.json grows as seeds are added
  if [ ! -f "$dst/$f.gz" ] || [ "$f" = data.json ]; then gzip -n -c "$f" > "$dst/$f.gz"; fi
done
cd "$repo"
git add "docs/runs/$name"
git commit -q -m "docs/runs/$name: checkpoint of the run's finished cells ($(ls "$src"/cells/*.json | wc -l) of them), so a new machine resumes it" || true
git log --oneline -1
