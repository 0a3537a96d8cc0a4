#!/usr/bin/env bash
# Done-when demonstration of issue 20: a two-node Ray cluster started by hand on this machine (both raylets
# on the loopback address, each with 1 CPU; the second with its own custom resource), the SmolLM2 grid
# RTN / SmoothQuant x W8A8 / W4A8 + float baseline on 2 WikiText-2 windows each, then a rerun.
# Usage: bash docs/ray_demo.sh 2>&1 | tee ray_demo.txt   (then stop the cluster: HOME=/tmp/raydemo/home .venv/bin/ray stop,
# after checking that no other Ray runs on this machine: ray stop ends every Ray process of the user)
set -u
D=/tmp/raydemo
export OMP_NUM_THREADS=1
export SLMQUANT_CACHE=${SLMQUANT_CACHE:-$HOME/.cache/slmquant}   # the model cache (HOME below is Ray's own)
export HOME=$D/home
mkdir -p $HOME
RAY=.venv/bin/ray
cd "$(dirname "$0")/.."
run() { echo; echo "\$ $*"; "$@"; echo "[exit status $?]"; }
run nice -n 10 $RAY start --head --node-ip-address 127.0.0.1 --port 6390 --num-cpus 1 --temp-dir $D/tmp \
    --include-dashboard=false --disable-usage-stats --node-manager-port 6391 --object-manager-port 6392 \
    --dashboard-agent-listen-port 6393 --dashboard-agent-grpc-port 6394 --metrics-export-port 6395 \
    --runtime-env-agent-port 6396 --min-worker-port 16000 --max-worker-port 16099
run nice -n 10 $RAY start --address 127.0.0.1:6390 --node-ip-address 127.0.0.1 --num-cpus 1 \
    --resources '{"second_node": 1}' --disable-usage-stats --node-manager-port 6401 --object-manager-port 6402 \
    --dashboard-agent-listen-port 6403 --dashboard-agent-grpc-port 6404 --metrics-export-port 6405 \
    --runtime-env-agent-port 6406 --min-worker-port 16100 --max-worker-port 16199
run nice -n 10 $RAY status --address 127.0.0.1:6390
run nice -n 10 .venv/bin/python -c "import ray; ray.init(address='127.0.0.1:6390', log_to_driver=False); [print(n['NodeID'][:12], n['NodeManagerAddress'], n['Resources']) for n in ray.nodes() if n['Alive']]"
GRID=(--executor ray --address 127.0.0.1:6390 --models smollm --methods rtn smooth --bits w8a8 w4a8 --profile cpu
      --limit 2 --eval-names wikitext2 --retries 1 --results results/ray_demo)
run nice -n 10 .venv/bin/python tools/sweep.py "${GRID[@]}"
run nice -n 10 .venv/bin/python -c "
import json
m = json.load(open('results/ray_demo/sweep.json'))
print('| cell | status | seconds | node (ip, node id) | attempts |')
print('|---|---|---|---|---|')
for e in m['runs']:
    print(f\"| {e['name']} | {e['status']} | {e['seconds'] and round(e['seconds'], 1)} | {e['node']} | {e['attempts']} |\")"
run grep -h "^=== " results/ray_demo/logs/smollm/*.log
run nice -n 10 .venv/bin/python tools/sweep.py "${GRID[@]}"
