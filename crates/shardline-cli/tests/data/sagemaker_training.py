"""A SageMaker script-mode training script, written as one is for SageMaker's training toolkit:
hyperparameters arrive as --name value arguments, the channels, model and output directories as
SM_* variables. Under MPI (Horovod's launch) each process trains on its share of the shards and
the ranks combine their sums; rank 0 alone saves the model. Shardline's tests run it unchanged.

The "model" is a nearest-class-mean classifier, enough to show data-parallel training end to end
with numpy only. Ranks exchange their partial sums through files in SM_OUTPUT_DATA_DIR, which
stands in for Horovod's allreduce so that the test needs no mpi4py."""

import argparse
import io
import json
import os
import sys
import tarfile
import time

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--learning-rate", type=float, default=0.1)
parser.add_argument("--fail", default="no")
parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR"))
parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN"))
parser.add_argument("--test", default=os.environ.get("SM_CHANNEL_TEST"))
parser.add_argument("--output-data-dir", default=os.environ.get("SM_OUTPUT_DATA_DIR"))
args = parser.parse_args()

rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))

# The toolkit's environment, as SageMaker sets it.
hps = json.loads(os.environ["SM_HPS"])
assert hps.get("epochs", 1) == args.epochs and isinstance(hps.get("epochs", 1), int), hps
assert json.loads(os.environ["SM_HOSTS"]) == ["algo-1"]
assert os.environ["SM_CURRENT_HOST"] == "algo-1"
assert int(os.environ["SM_NUM_CPUS"]) >= 1 and os.environ["SM_NUM_GPUS"] == "0"
assert "train" in json.loads(os.environ["SM_CHANNELS"])
assert float(os.environ.get("SM_HP_LEARNING_RATE", "0.1")) == args.learning_rate
config_dir = os.environ["SM_INPUT_CONFIG_DIR"]
with open(os.path.join(config_dir, "hyperparameters.json")) as f:
    assert json.load(f).get("epochs", "1") == str(args.epochs)
with open(os.path.join(config_dir, "resourceconfig.json")) as f:
    assert json.load(f)["current_host"] == "algo-1"

if args.fail == "yes":
    with open(os.path.join(os.path.dirname(args.output_data_dir), "failure"), "w") as f:
        f.write("the script was asked to fail")
    sys.exit(2)


def samples(channel_dir, shard_filter=lambda i: True):
    """(tensor, label) pairs of the WebDataset shards of a channel directory."""
    shards = sorted(n for n in os.listdir(channel_dir) if n.endswith(".tar"))
    for i, name in enumerate(shards):
        if not shard_filter(i):
            continue
        groups = {}
        with tarfile.open(os.path.join(channel_dir, name)) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                groups.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for parts in groups.values():
            x = np.load(io.BytesIO(parts["npy"])).astype(np.float64).ravel()
            yield x, int(parts["cls"])


# This rank's share: every size-th shard, as Horovod scripts shard their input.
sums, counts = {}, {}
for x, y in samples(args.train, lambda i: i % size == rank):
    sums[y] = sums.get(y, 0) + x
    counts[y] = counts.get(y, 0) + 1
partial = {str(k): {"sum": sums[k].tolist(), "count": counts[k]} for k in sums}
path = os.path.join(args.output_data_dir, f"rank-{rank}.json")
with open(path + ".tmp", "w") as f:
    json.dump(partial, f)
os.replace(path + ".tmp", path)
print(f"rank {rank}/{size}: {sum(counts.values())} samples", flush=True)

if rank != 0:
    sys.exit(0)

# Rank 0 combines every rank's sums (the allreduce), then saves and evaluates the model.
deadline = time.time() + 120
parts = []
for r in range(size):
    p = os.path.join(args.output_data_dir, f"rank-{r}.json")
    while not os.path.exists(p):
        if time.time() > deadline:
            sys.exit(f"rank {r} never wrote {p}")
        time.sleep(0.05)
    with open(p) as f:
        parts.append(json.load(f))
total_sum, total_count = {}, {}
for part in parts:
    for k, v in part.items():
        total_sum[int(k)] = total_sum.get(int(k), 0) + np.array(v["sum"])
        total_count[int(k)] = total_count.get(int(k), 0) + v["count"]
classes = sorted(total_sum)
means = np.stack([total_sum[k] / total_count[k] for k in classes])
np.save(os.path.join(args.model_dir, "means.npy"), means)

correct = seen = 0
if args.test:
    for x, y in samples(args.test):
        predicted = classes[int(np.argmin(((means - x) ** 2).sum(axis=1)))]
        correct += predicted == y
        seen += 1
metrics = {
    "ranks": size,
    "train_samples": int(sum(total_count.values())),
    "test_samples": seen,
    "test_accuracy": correct / max(seen, 1),
}
with open(os.path.join(args.model_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f)
print(json.dumps(metrics), flush=True)
