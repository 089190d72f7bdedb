"""Photographs for `shardline bench process --source`: 500x375 JPEGs cut from real photos.

The generated benchmark images are noisy 4:4:4 shapes, close to the worst case for a JPEG
decoder. This script makes the other end: crops of the two photographs that ship with
scikit-learn (`sklearn.datasets.load_sample_images`: a temple in China and a flower), each
rescaled, flipped and cropped at random (seeded), saved as camera and web JPEGs usually are:
quality 90, 4:2:0 chroma subsampling (Pillow's default). Four classes, so that `shardline
manifest` can read the directory as a dataset.

    pip install scikit-learn      # not in requirements.txt: only this script needs it
    python3 bench/photos.py --out bench/data/photos --images 2000
    shardline bench process --source bench/data/photos
"""

import argparse
import os
import random

from PIL import Image
from sklearn.datasets import load_sample_images


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    photos = [Image.fromarray(array) for array in load_sample_images().images]
    rng = random.Random(args.seed)
    classes = 4
    for index in range(args.images):
        photo = rng.choice(photos)
        scale = rng.uniform(1.0, 1.6)
        width, height = int(photo.width * scale), int(photo.height * scale)
        image = photo.resize((width, height), Image.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        x, y = rng.randint(0, width - 500), rng.randint(0, height - 375)
        directory = os.path.join(args.out, f"class-{index % classes}")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{index // classes:06d}.jpg")
        # Written under a temporary name and renamed: an interrupted run leaves no cut-off JPEG.
        image.crop((x, y, x + 500, y + 375)).save(path + ".tmp", "JPEG", quality=90)
        os.replace(path + ".tmp", path)
    print(f"{args.images} photographs of 500x375 in {args.out}")


if __name__ == "__main__":
    main()
