#!/usr/bin/env bash
# Before a GPU session, where pip works: download into .whl/ (git-ignored) exactly the wheels dialsum needs that the
# GPU image lacks (benchmarks/gpu/wheels.txt), for its Python 3.12 on manylinux x86_64, and check that the working
# tree plus .whl/ stays within the 64 MiB that travels to the machine.
#
#   bash benchmarks/gpu/prepare.sh
#
# Required wheels must all download; an optional one (bitsandbytes) is left out, and said so, when it would push the
# carry past the limit; `left-out` entries are never downloaded and the reason is printed. Each wheel's
# Requires-Dist is checked against the other wheels and the image's packages (image-packages.txt). Then run, there,
# with .whl carried: bash benchmarks/gpu/check.sh RESULTS_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
HELPER=(env PYTHONPATH="$PWD/src" "$PY" benchmarks/gpu/gpucheck.py)
WHEELS=.whl
LIMIT=$((64 * 1024 * 1024))
MARGIN=$((512 * 1024))  # room for files written before the session (a results folder is git-ignored)
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp)  # pure-Python wheels match too
for n in 28 27 24 17; do PLATFORM+=(--platform "manylinux_2_${n}_x86_64"); done  # bitsandbytes is 2_24
PLATFORM+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

git check-ignore -q "$WHEELS/" || { echo "prepare.sh: $WHEELS/ must be git-ignored (.gitignore)" >&2; exit 1; }
STAGING=$(mktemp -d "${TMPDIR:-/tmp}/dialsum-wheels.XXXXXX")
trap 'rm -rf "$STAGING"' EXIT

download() {  # download SPEC DIR
    "$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$2" "$1" 2>&1 | grep -v "^WARNING: Location" || true
    ls "$2"/*.whl >/dev/null 2>&1
}

echo "required wheels:"
for spec in $("${HELPER[@]}" manifest --kind required); do
    if ! download "$spec" "$STAGING"; then
        echo "prepare.sh: $spec: no wheel for cp312 manylinux x86_64" >&2
        exit 1
    fi
    echo "  $spec"
done
rm -rf "$WHEELS"
mkdir -p "$WHEELS"
mv "$STAGING"/*.whl "$WHEELS"/

size() { "${HELPER[@]}" size --wheels "$WHEELS" --json | "$PY" -c "import json, sys; print(json.load(sys.stdin)['total_bytes'])"; }
echo "optional wheels (while the carry stays under $((LIMIT / 1024 / 1024)) MiB):"
for spec in $("${HELPER[@]}" manifest --kind optional); do
    single=$(mktemp -d "$STAGING/optional.XXXXXX")
    if ! download "$spec" "$single"; then
        echo "  $spec: LEFT OUT (no wheel for cp312 manylinux x86_64)"
        continue
    fi
    wheel=$(ls "$single"/*.whl)
    bytes=$(stat -c %s "$wheel")
    total=$(($(size) + bytes))
    if [ $((total + MARGIN)) -le $LIMIT ]; then
        mv "$wheel" "$WHEELS"/
        echo "  $spec: carried ($((bytes / 1024 / 1024)) MiB)"
    else
        echo "  $spec: LEFT OUT ($((bytes / 1024 / 1024)) MiB would make the carry $((total / 1024 / 1024)) MiB)"
    fi
done
echo "left out on purpose:"
"${HELPER[@]}" manifest --kind left-out | while IFS=$'\t' read -r name why; do echo "  $name: $why"; done

echo "requirements of the carried wheels (against each other and the GPU image's packages):"
"${HELPER[@]}" requirements --wheels "$WHEELS"
ls -l "$WHEELS"
"${HELPER[@]}" size --wheels "$WHEELS"
