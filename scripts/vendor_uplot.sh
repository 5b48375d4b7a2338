#!/usr/bin/env bash
# Re-vendor uPlot (the dashboard's charts) from the npm registry: pinned version, files copied unchanged.
set -euo pipefail
version="${1:-1.6.32}"
dest="src/expertkit/dashboard/static/vendor/uplot"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack "uplot@$version" >/dev/null && tar xzf "uplot-$version.tgz")
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$dest/"
cp "$work/package/LICENSE" "$dest/LICENSE"
echo "uPlot $version vendored into $dest; npm integrity: $(cd "$work" && npm view "uplot@$version" dist.integrity)"
sha256sum "$dest"/uPlot.iife.min.js "$dest"/uPlot.min.css
