#!/usr/bin/env bash
# README's first command: set up a fresh clone, run the node on its embedded defaults
# (config/node.toml: AE COVIDNODE, port 11112, data in ./data, the shipped demo bundle),
# send it a synthetic chest CT and print the report's summary. The node then keeps
# running in the foreground; Ctrl-C stops it cleanly. QUICKSTART_EXIT=1 stops it
# after the demo instead (used by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/dicomnode config check config/node.toml

.venv/bin/dicomnode serve --config config/node.toml &
node_pid=$!
stop_node() { kill -TERM "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; }
trap stop_node EXIT
trap 'exit 130' INT TERM

port=$(.venv/bin/python -c "from dicomnode.config import load_config; print(load_config('config/node.toml').node.port)")
for _ in $(seq 1 300); do
  .venv/bin/python -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1', $port)))" && break
  kill -0 "$node_pid" 2>/dev/null || { echo "quickstart: the node did not start" >&2; exit 1; }
  sleep 0.2
done

.venv/bin/dicomnode demo --config config/node.toml
echo
echo "The node is running: AE COVIDNODE on port 11112, data in ./data."
echo "Send it chest CT from your PACS or with: storescu -aec COVIDNODE 127.0.0.1 11112 FILES..."
echo "Status: .venv/bin/dicomnode status, or the dashboard at http://127.0.0.1:11180/dashboard.  Ctrl-C stops the node."
if [ "${QUICKSTART_EXIT:-0}" = 1 ]; then exit 0; fi
wait "$node_pid"
