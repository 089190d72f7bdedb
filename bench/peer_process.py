"""The processing step as it is usually written in Python: the peer of `shardline bench process`.

For each object of a SageMaker manifest (this instance's share, dealt round-robin like Shardline's
sharded-by-key rule): Pillow decodes it (with `draft`, as Shardline scales large JPEGs in the DCT
domain), converts it to RGB and resizes it bilinearly, numpy turns it into a uint8 array saved as
.npy, and the sample (.npy, .cls, .json) is appended to a size-bounded WebDataset tar shard with
the standard tarfile module.
"""

import argparse
import io
import json
import os
import tarfile
import time

import numpy as np
from PIL import Image


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--shard-bytes", type=int, default=64 << 20)
    parser.add_argument(
        "--decode-only",
        action="store_true",
        help="only decode each image (the floor of the step); print the seconds as JSON",
    )
    args = parser.parse_args()

    with open(args.manifest) as f:
        manifest = json.load(f)
    prefix = manifest[0]["prefix"]
    root = prefix[len("file://"):] if prefix.startswith("file://") else prefix
    keys = sorted(manifest[1:])[args.rank :: args.instances]
    classes = sorted({k.split("/")[0] for k in manifest[1:]})
    label = {c: i for i, c in enumerate(classes)}

    if args.decode_only:
        started = time.perf_counter()
        for key in keys:
            with Image.open(os.path.join(root, key)) as image:
                image.draft("RGB", (args.size, args.size))
                image.load()
        print(json.dumps({"images": len(keys), "seconds": time.perf_counter() - started}))
        return

    os.makedirs(args.out, exist_ok=True)
    shard_no, shard, written = 0, None, 0

    def open_shard(n):
        return tarfile.open(os.path.join(args.out, f"algo-{args.rank + 1}-{n:06d}.tar"), "w")

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    for i, key in enumerate(keys):
        with Image.open(os.path.join(root, key)) as image:
            # As Shardline's recipe does: a JPEG at least twice the size needed is decoded at
            # 1/2, 1/4 or 1/8 scale in the DCT domain (never below the requested size).
            image.draft("RGB", (args.size, args.size))
            array = np.asarray(image.convert("RGB").resize((args.size, args.size), Image.BILINEAR), dtype=np.uint8)
        buffer = io.BytesIO()
        np.save(buffer, array)
        if shard is None:
            shard = open_shard(shard_no)
        base = f"{i:08d}"
        add(shard, base + ".npy", buffer.getvalue())
        add(shard, base + ".cls", str(label[key.split("/")[0]]).encode())
        add(shard, base + ".json", json.dumps({"key": key, "source": prefix + key}).encode())
        written += len(buffer.getvalue())
        if written >= args.shard_bytes:
            shard.close()
            shard, shard_no, written = None, shard_no + 1, 0
    if shard is not None:
        shard.close()


if __name__ == "__main__":
    main()
