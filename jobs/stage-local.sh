#!/usr/bin/env bash
# Stage a sample dump on this machine, one process, all cores.
# Copy and edit: INPUT may be a local path or a bucket URL (s3://, gs://, az://).
set -euo pipefail
# The binary: on PATH (cargo install --path . --locked), or PRIO_PROCESSOR=target/release/prio-processor.
: "${PRIO_PROCESSOR:=prio-processor}"
command -v "$PRIO_PROCESSOR" >/dev/null ||
  { echo "$PRIO_PROCESSOR not found: run cargo install --path . --locked, or set PRIO_PROCESSOR" >&2; exit 1; }
: "${DATE:=2019-06-26}"
: "${INPUT:=data/work/dump/sink}"          # written by `prio-processor integrate`
: "${OUTPUT:=data/work/staged}"
: "${WORKERS:=$(nproc)}"
: "${STAGING_SECRET:?set STAGING_SECRET (base64, >= 16 bytes), e.g. from prio-processor shared-seed; keep it}"
: "${DATA_CONFIG:=data/content.json}"     # the servers' batch config: other batch ids are dropped
export STAGING_SECRET DATA_CONFIG
exec "$PRIO_PROCESSOR" stage --date "$DATE" --input "$INPUT" --output "$OUTPUT" --workers "$WORKERS"
