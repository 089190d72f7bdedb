"""A SageMaker Processing script, written as one is for SageMaker: it takes its base folder as an
argument (default /opt/ml/processing), reads the container's config files, and writes its
outputs under processing/output/<name>/. Shardline's tests run it unchanged."""

import argparse
import json
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--base", default="/opt/ml/processing")
parser.add_argument("--config", default="/opt/ml/config")
parser.add_argument("--fail", action="store_true")
args = parser.parse_args()

with open(os.path.join(args.config, "resourceconfig.json")) as f:
    resource = json.load(f)
with open(os.path.join(args.config, "processingjobconfig.json")) as f:
    job = json.load(f)

host = resource["current_host"]
assert host in resource["hosts"], resource
assert job["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == len(resource["hosts"])
names = [i["InputName"] for i in job["ProcessingInputs"]]

if args.fail:
    with open(os.path.join(os.path.dirname(args.config), "output", "message"), "w") as f:
        f.write("bad hyperparameters: the script was asked to fail")
    sys.exit(3)

for spec in job["ProcessingInputs"]:
    name = spec["InputName"]
    local = spec["S3Input"]["LocalPath"]
    assert local == os.path.join(args.base, "input", name), (local, args.base)
    files = []
    for root, _dirs, found in os.walk(local):
        files += [os.path.relpath(os.path.join(root, n), local) for n in found]
    out = os.path.join(args.base, "output", name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"host": host, "files": sorted(files), "inputs": names}, f)
print(f"{host}: processed {names}")
