#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh installs on the GPU machine, made here (that machine has no network,
# no cargo, and its image lacks some of what the lab imports):
#   - the lab's dependencies missing from the image: pydantic (with pydantic-core, annotated-types,
#     typing-inspection, and typing-extensions, which pydantic-core needs recent: the image's version
#     is unread), SQLAlchemy (the history store), ruptures (change points);
#   - hatchling with trove-classifiers and tomlkit, to build the lab from the tree there (pip
#     --no-build-isolation; its other needs, packaging, pathspec and pluggy, are in the image);
#   - the Rust extension as the abi3 wheel built here (cp310-abi3 loads on any CPython >= 3.10).
# Versions are the ones the lab is tested with here (the main virtualenv's). Into a git-ignored
# folder, which the device call names in `carry`:
#   bash scripts/gpu_wheels.sh                                   # .whl/, for the image's CPython 3.12
#   PYVER=3.11 DEST=/tmp/w bash scripts/gpu_wheels.sh            # the same set for a 3.11 (the bare proof)
# RUST_WHEELS names the folder holding elbolab_rust-*-abi3-*.whl (default target/wheels, made by
# `make rust`).
set -euo pipefail

PYVER=${PYVER:-3.12}
DEST=${DEST:-.whl}
PYTHON=${PYTHON:-python3}
RUST_WHEELS=${RUST_WHEELS:-target/wheels}
PACKAGES=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 SQLAlchemy==2.1.9 ruptures==1.1.10 hatchling==1.33.0
  trove-classifiers==2026.9.21.13 tomlkit==0.15.3
)

rm -rf "$DEST"
mkdir -p "$DEST"
# binary wheels for that CPython on x86-64 Linux only: nothing is built there, nothing here for it
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${PACKAGES[@]}"

rust=("$RUST_WHEELS"/elbolab_rust-*-abi3-*.whl)
if [ ! -f "${rust[0]}" ]; then
  echo "gpu_wheels: no elbolab_rust abi3 wheel in $RUST_WHEELS (make rust builds it; RUST_WHEELS names another folder)" >&2
  exit 1
fi
if [ "${#rust[@]}" -ne 1 ]; then
  echo "gpu_wheels: ${#rust[@]} elbolab_rust wheels in $RUST_WHEELS; keep one (pip refuses two)" >&2
  exit 1
fi
cp "${rust[0]}" "$DEST"/

count=$(ls "$DEST"/*.whl | wc -l)
if [ "$count" -ne $((${#PACKAGES[@]} + 1)) ]; then
  echo "gpu_wheels: $count wheels in $DEST, expected $((${#PACKAGES[@]} + 1))" >&2
  exit 1
fi
echo "gpu_wheels: $count wheels for CPython $PYVER in $DEST ($(du -sh "$DEST" | cut -f1)):"
ls -1 "$DEST"
