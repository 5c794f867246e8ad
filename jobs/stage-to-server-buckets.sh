#!/usr/bin/env bash
# Stage an ingestion dump straight into both servers' private buckets (raw/ layout),
# as one process of a cluster. Run the same script on every machine with its PROCESS.
#
#   hosts.txt: one host:port per line, in process order (the same file everywhere)
#   PROCESS=0 jobs/stage-to-server-buckets.sh    # on host 0
#   PROCESS=1 jobs/stage-to-server-buckets.sh    # on host 1
set -euo pipefail
# The binary: on PATH (cargo install --path . --locked), or PRIO_PROCESSOR=target/release/prio-processor.
: "${PRIO_PROCESSOR:=prio-processor}"
command -v "$PRIO_PROCESSOR" >/dev/null ||
  { echo "$PRIO_PROCESSOR not found: run cargo install --path . --locked, or set PRIO_PROCESSOR" >&2; exit 1; }
: "${DATE:?set DATE=YYYY-MM-DD}"
: "${INPUT:?set INPUT, e.g. gs://ingestion-sink/telemetry-decoded_gcs-sink-doctype_prio/output}"
: "${BUCKET_A:?set BUCKET_A, server A private bucket URL}"
: "${BUCKET_B:?set BUCKET_B, server B private bucket URL}"
: "${HOSTFILE:=jobs/hosts.txt}"
: "${PROCESSES:=$(grep -cv '^\s*\(#\|$\)' "$HOSTFILE")}"
: "${PROCESS:?set PROCESS, the line of this machine in the hostfile, from 0}"
: "${WORKERS:=$(nproc)}"
: "${STAGING_SECRET:?set STAGING_SECRET (base64, >= 16 bytes)}"
# The servers' batch config (a file or inline JSON): entries of other batch ids are dropped.
: "${DATA_CONFIG:?set DATA_CONFIG, the batch config both servers use}"
export STAGING_SECRET DATA_CONFIG
exec "$PRIO_PROCESSOR" stage --date "$DATE" --input "$INPUT" \
  --output-a "$BUCKET_A" --output-b "$BUCKET_B" \
  --workers "$WORKERS" --processes "$PROCESSES" --process "$PROCESS" --hostfile "$HOSTFILE"
