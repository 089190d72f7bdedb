"""Training as it is usually written with TensorFlow/Keras: the peer of `shardline bench train`.

Reads the output of `shardline process` (recipe.json, lineage.json, <channel>/index.json and the
WebDataset tar shards it lists, whose samples are <key>.npy uint8 HWC tensors and <key>.cls label
ids), normalises the tensors exactly as Shardline does (x = (value - mean[c]) / std[c], float32,
computed as (value - mean) * (1 / std) in float32 like shardline-dataset), and trains the
reference CNN: Conv2D(32, 3x3, relu) -> MaxPool2D(2) -> Conv2D(64, 3x3, relu) -> MaxPool2D(2) ->
Flatten -> Dense(128, relu) -> Dense(classes), Adam, softmax cross-entropy, on the CPU with a fixed
number of threads; `--model resnet18` trains the CIFAR ResNet-18 instead (3x3 stem, 4 stages of 2
basic blocks, batch norm, projection shortcuts, global average pool), `--model bncnn` Shardline's
default (3 blocks of stride-2 3x3 convolution + batch norm + ReLU, 16/32/64, dense 128). After
training, inference is timed at batch 64 on the test channel (`model(x, training=False)` in a
compiled function, as a serving loop runs it). Every channel is loaded into memory before the clock starts; the clock measures
training only (cumulative over epochs; evaluation after each epoch is left out). Prints one line
per epoch on stderr and the result as JSON on stdout (and to --json FILE).
"""

import argparse
import io
import json
import os
import sys
import tarfile
import time


def fail(message):
    sys.exit(f"peer_train: {message}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="the output directory of `shardline process`")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2, help="intra- and inter-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onednn", choices=["on", "off"], default="off")
    parser.add_argument("--model", choices=["reference", "resnet18", "bncnn"], default="reference")
    parser.add_argument("--infer-batch", type=int, default=64, help="batch of the inference timing")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    if args.epochs < 1 or args.batch < 1 or args.threads < 1 or args.infer_batch < 1:
        fail("--epochs, --batch, --threads and --infer-batch must be at least 1")
    return args


def load_channel(np, data, name, recipe):
    """(x, y) of a channel, x float32 NHWC normalised, y int64; None when the channel is absent."""
    index_path = os.path.join(data, name, "index.json")
    if not os.path.exists(index_path):
        return None
    with open(index_path) as f:
        index = json.load(f)
    shape = (recipe["height"], recipe["width"], len(recipe["mean"]))
    xs, ys = [], []
    for shard in index["shardlist"]:
        path = os.path.join(data, name, shard["url"])
        groups = {}
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    # WebDataset: the key is the basename up to its first dot.
                    directory, _, base = member.name.rpartition("/")
                    stem, _, ext = base.partition(".")
                    if ext in ("npy", "cls"):
                        key = f"{directory}/{stem}" if directory else stem
                        groups.setdefault(key, {})[ext] = tar.extractfile(member).read()
        except (OSError, tarfile.TarError) as e:
            fail(f"cannot read shard {path}: {e}")
        if len(groups) != shard.get("nsamples", len(groups)):
            fail(f"{path} holds {len(groups)} samples, but {index_path} says {shard['nsamples']}")
        for key in sorted(groups):
            parts = groups[key]
            if "npy" not in parts or "cls" not in parts:
                fail(f"sample {key} of {path} lacks its .npy or .cls member")
            tensor = np.load(io.BytesIO(parts["npy"]), allow_pickle=False)
            if tensor.dtype != np.uint8 or tensor.shape != shape:
                fail(f"sample {key} of {path} is {tensor.dtype} {tensor.shape}, not uint8 {shape} as recipe.json says")
            xs.append(tensor)
            ys.append(int(parts["cls"].decode().strip()))
    if not xs:
        fail(f"the {name} channel of {data} is empty")
    mean = np.array(recipe["mean"], dtype=np.float64).astype(np.float32)
    scale = np.float32(1.0) / np.array(recipe["std"], dtype=np.float64).astype(np.float32)
    x = (np.stack(xs).astype(np.float32) - mean) * scale
    return x.astype(np.float32, copy=False), np.array(ys, dtype=np.int64)


def build(tf, kind, shape, classes):
    """The model and the padding of its convolutions."""
    layers = tf.keras.layers
    if kind == "resnet18":
        inputs = tf.keras.Input(shape=shape)

        def conv_bn(x, width, stride, size=3):
            x = layers.Conv2D(width, size, strides=stride, padding="same", use_bias=False)(x)
            return layers.BatchNormalization()(x)

        x = layers.ReLU()(conv_bn(inputs, 64, 1))
        channels = 64
        for stage, width in enumerate([64, 128, 256, 512]):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                y = layers.ReLU()(conv_bn(x, width, stride))
                y = conv_bn(y, width, 1)
                shortcut = conv_bn(x, width, stride, size=1) if stride != 1 or channels != width else x
                x = layers.ReLU()(layers.Add()([y, shortcut]))
                channels = width
        x = layers.GlobalAveragePooling2D()(x)
        return tf.keras.Model(inputs, layers.Dense(classes)(x)), "same"
    if kind == "bncnn":
        stack = [tf.keras.Input(shape=shape)]
        for width in (16, 32, 64):
            stack += [
                layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False),
                layers.BatchNormalization(),
                layers.ReLU(),
            ]
        stack += [layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(classes)]
        return tf.keras.Sequential(stack), "same"
    # Unpadded convolutions as the Keras tutorials write them; inputs too small for two unpadded
    # 3x3 convolutions and 2x2 pools (under 14 pixels, such as scikit-learn's 8x8 digits) get
    # "same" padding instead.
    padding = "same" if min(shape[0:2]) < 14 else "valid"
    model = tf.keras.Sequential(
        [
            tf.keras.Input(shape=shape),
            layers.Conv2D(32, 3, activation="relu", padding=padding),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu", padding=padding),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(classes),
        ]
    )
    return model, padding


def inference_rate(tf, np, model, x, batch):
    """Samples per second of `model(x, training=False)` at `batch`, over at least a second."""
    forward = tf.function(lambda b: model(b, training=False))
    batches = [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)] or [x]
    forward(batches[0])  # traced and warmed outside the clock
    samples, started = 0, time.perf_counter()
    while True:
        for b in batches:
            forward(b).numpy()
            samples += len(b)
        seconds = time.perf_counter() - started
        if seconds >= 1.0:
            return samples / seconds


def main():
    args = parse_args()

    # Read when TensorFlow is imported, so set first.
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if args.onednn == "on" else "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    try:
        import tensorflow as tf
    except ImportError:
        fail("tensorflow is not installed: python3 -m pip install -r bench/requirements-train.txt")

    # Before anything else touches the runtime.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.config.set_visible_devices([], "GPU")
    tf.keras.utils.set_random_seed(args.seed)

    recipe_path = os.path.join(args.data, "recipe.json")
    if not os.path.exists(recipe_path):
        fail(f"{recipe_path} is missing: --data must be the output directory of `shardline process`")
    with open(recipe_path) as f:
        recipe = json.load(f)
    if len(recipe["mean"]) != len(recipe["std"]):
        fail(f"{recipe_path}: mean and std have different lengths")

    train = load_channel(np, args.data, "train", recipe)
    if train is None:
        fail(f"{args.data} has no train channel (train/index.json)")
    validation = load_channel(np, args.data, "validation", recipe)
    test = load_channel(np, args.data, "test", recipe)

    # Label names by id, as Shardline's trainer takes them: from the processing lineage.
    classes = 1 + max(int(c[1].max()) for c in (train, validation, test) if c is not None)
    lineage_path = os.path.join(args.data, "lineage.json")
    if os.path.exists(lineage_path):
        with open(lineage_path) as f:
            labels = json.load(f).get("labels") or []
        if labels:
            if classes > len(labels):
                fail(f"label id {classes - 1} is out of range of the {len(labels)} labels in {lineage_path}")
            classes = len(labels)

    model, padding = build(tf, args.model, train[0].shape[1:], classes)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(args.lr),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    def accuracy(channel):
        if channel is None:
            return None
        return float(model.evaluate(channel[0], channel[1], batch_size=256, verbose=0)[1])

    rng = np.random.default_rng(args.seed)
    n = len(train[1])
    epochs, clock, cpu = [], 0.0, 0.0
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(n)
        x, y = train[0][order], train[1][order]  # shuffled outside the clock, like loading
        started, started_cpu = time.perf_counter(), time.process_time()
        history = model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=0)
        seconds = time.perf_counter() - started
        clock += seconds
        cpu += time.process_time() - started_cpu
        record = {
            "epoch": epoch,
            "train_seconds": clock,
            "samples_per_s": n / seconds,
            "train_cpu_seconds": cpu,  # CPU time of all threads: shows when the machine was shared
            "train_loss": float(history.history["loss"][-1]),
            "train_accuracy": float(history.history["accuracy"][-1]),
            "validation_accuracy": accuracy(validation),
            "test_accuracy": accuracy(test),
        }
        epochs.append(record)
        shown = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(
            f"  epoch {epoch:>3}: loss {record['train_loss']:.4f}, accuracy {record['train_accuracy']:.3f},"
            f" validation {shown(record['validation_accuracy'])}, test {shown(record['test_accuracy'])},"
            f" {record['samples_per_s']:.0f} samples/s, {clock:.1f} s ({cpu:.1f} s CPU)",
            file=sys.stderr,
        )

    infer_x = (test if test is not None else train)[0]
    infer = inference_rate(tf, np, model, infer_x, args.infer_batch)
    print(f"  inference at batch {args.infer_batch}: {infer:.0f} samples/s", file=sys.stderr)

    result = {
        "framework": f"tensorflow {tf.__version__}",
        "model": args.model,
        "inference_batch": args.infer_batch,
        "inference_samples_per_s": infer,
        "onednn": args.onednn,
        "threads": args.threads,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "padding": padding,
        "classes": classes,
        "samples_train": n,
        "samples_validation": 0 if validation is None else len(validation[1]),
        "samples_test": 0 if test is None else len(test[1]),
        "epochs": epochs,
        "final_test_accuracy": epochs[-1]["test_accuracy"],
        "total_train_seconds": clock,
        "total_train_cpu_seconds": cpu,
    }
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
