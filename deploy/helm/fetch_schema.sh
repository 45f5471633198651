#!/usr/bin/env bash
# Downloads the values schema and the default values of the official Dagster Helm chart at the
# Dagster release this project pins, for prediction_pipeline_tests/test_deploy.py.
#
# Source: https://github.com/dagster-io/dagster at tag $DAGSTER_VERSION:
#   helm/dagster/values.schema.json  generated in that repository from the pydantic models in
#                                    helm/dagster/schema (not published on PyPI)
#   helm/dagster/values.yaml         the chart's defaults: Helm validates the defaults merged
#                                    with our overrides, and the schema requires keys that only
#                                    the defaults set, so the test needs both files.
# Neither file is committed here; each download is checked against the sha256 sums in
# dagster-chart-$DAGSTER_VERSION.sha256 beside this script.
#
# Usage:
#   deploy/helm/fetch_schema.sh [DEST_DIR]        download and verify (default .local/helm/<version>)
#   deploy/helm/fetch_schema.sh --pin [DEST_DIR]  first download of a new version: record the sums
#                                                 (compare the files with the packaged chart
#                                                 `helm pull dagster/dagster --version <version>`
#                                                 before committing the .sha256 file)
# Then: export DAGSTER_HELM_SCHEMA=<DEST_DIR>/values.schema.json
set -euo pipefail

# Keep in step with the dagster pin in pyproject.toml (test_deploy.py checks it).
DAGSTER_VERSION=1.13.27
# DAGSTER_HELM_BASE_URL: a mirror of the same files (the sums are checked all the same).
BASE_URL="${DAGSTER_HELM_BASE_URL:-https://raw.githubusercontent.com/dagster-io/dagster/${DAGSTER_VERSION}/helm/dagster}"
FILES=(values.schema.json values.yaml)

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pins="$here/dagster-chart-${DAGSTER_VERSION}.sha256"

pin=0
if [[ "${1:-}" == "--pin" ]]; then
  pin=1
  shift
fi
dest="${1:-$repo/.local/helm/$DAGSTER_VERSION}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

for f in "${FILES[@]}"; do
  curl --fail --silent --show-error --location --retry 3 -o "$tmp/$f" "$BASE_URL/$f"
done

if [[ -s "$pins" ]]; then
  # Every downloaded file must be listed and match; nothing is installed otherwise.
  for f in "${FILES[@]}"; do
    grep -q "  $f\$" "$pins" || { echo "no sha256 for $f in $pins" >&2; exit 1; }
  done
  (cd "$tmp" && sha256sum --check --strict --quiet "$pins")
elif [[ $pin == 1 ]]; then
  (cd "$tmp" && sha256sum "${FILES[@]}") > "$pins"
  echo "recorded the sums in $pins: check the files, then commit it" >&2
else
  echo "no sums pinned in $pins yet; downloaded:" >&2
  (cd "$tmp" && sha256sum "${FILES[@]}") >&2
  echo "check the files, then run again with --pin" >&2
  exit 1
fi

mkdir -p "$dest"
for f in "${FILES[@]}"; do
  mv "$tmp/$f" "$dest/$f"
done
printf 'dagster %s\n%s/{%s}\n' "$DAGSTER_VERSION" "$BASE_URL" "$(IFS=,; echo "${FILES[*]}")" \
  > "$dest/SOURCE"
echo "export DAGSTER_HELM_SCHEMA=$dest/values.schema.json"
