#!/usr/bin/env bash
# Run one server's pipeline (verify1 -> verify2 -> aggregate -> publish) for a date,
# as one process of a cluster of this server's machines. Each server (A and B) runs
# this on its own machines, with its own keys and buckets. Run the same script on
# every machine of the cluster with its PROCESS; one machine: PROCESSES=1 PROCESS=0.
#
#   hosts.txt: one host:port per line, in process order (the same file everywhere)
#   PROCESS=0 jobs/process-server.sh    # on host 0
#   PROCESS=1 jobs/process-server.sh    # on host 1
#
# Keys come from the environment (or a secrets manager that sets it); never put them
# in this file. Credentials for the buckets come from the cloud SDK variables
# (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*), see README "Storage".
set -euo pipefail
# The binary: on PATH (cargo install --path . --locked), or PRIO_PROCESSOR=target/release/prio-processor.
: "${PRIO_PROCESSOR:=prio-processor}"
command -v "$PRIO_PROCESSOR" >/dev/null ||
  { echo "$PRIO_PROCESSOR not found: run cargo install --path . --locked, or set PRIO_PROCESSOR" >&2; exit 1; }
: "${DATE:?set DATE=YYYY-MM-DD}"
: "${SERVER_ID:?set SERVER_ID=A or B}"
: "${PRIVATE_KEY_HEX:?set PRIVATE_KEY_HEX, the private key of this server (prio-processor keygen)}"
: "${PRIVATE_SIGNING_KEY_HEX:?set PRIVATE_SIGNING_KEY_HEX, the signing_private_key of this server (prio-processor keygen)}"
: "${PUBLIC_SIGNING_KEY_HEX_EXTERNAL:?set PUBLIC_SIGNING_KEY_HEX_EXTERNAL, the signing_public_key of the peer}"
: "${SHARED_SECRET:?set SHARED_SECRET, the verify key both servers share (prio-processor shared-seed)}"
: "${DATA_CONFIG:?set DATA_CONFIG, the batch config (a JSON file or inline JSON)}"
: "${BUCKET_INTERNAL_PRIVATE:?set BUCKET_INTERNAL_PRIVATE, the private bucket URL of this server}"
: "${BUCKET_INTERNAL_SHARED:?set BUCKET_INTERNAL_SHARED, the inbox URL of this server (the peer writes here)}"
: "${BUCKET_EXTERNAL_SHARED:?set BUCKET_EXTERNAL_SHARED, the inbox URL of the peer}"
: "${HOSTFILE:=jobs/hosts.txt}"
: "${PROCESSES:=$(grep -cv '^\s*\(#\|$\)' "$HOSTFILE")}"
: "${PROCESS:?set PROCESS, the line of this machine in the hostfile, from 0}"
: "${WORKERS:=$(nproc)}"
# Polling for the peer: RETRY_LIMIT (default 8), RETRY_DELAY (2 s), RETRY_BACKOFF_EXPONENT (2).
# Anti-replay: REPLAY_WINDOW_DAYS (default 7), the same on both servers.
export SERVER_ID PRIVATE_KEY_HEX PRIVATE_SIGNING_KEY_HEX PUBLIC_SIGNING_KEY_HEX_EXTERNAL SHARED_SECRET DATA_CONFIG
export BUCKET_INTERNAL_PRIVATE BUCKET_INTERNAL_SHARED BUCKET_EXTERNAL_SHARED
cluster=(--workers "$WORKERS")
if [ "$PROCESSES" -gt 1 ]; then
  cluster+=(--processes "$PROCESSES" --process "$PROCESS" --hostfile "$HOSTFILE")
fi
exec "$PRIO_PROCESSOR" process --date "$DATE" "${cluster[@]}"
