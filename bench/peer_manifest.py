"""The manifest step as it is usually written in Python: the peer of `shardline bench manifest`.

A listing loop (os.walk + os.stat locally, boto3's list_objects_v2 paginator on S3), a pandas
dataframe, scikit-learn's LabelEncoder and a stratified train_test_split, manifests written with
json, the table with to_parquet. It does the same job as `shardline manifest` with the default
split (train=0.8, validation=0.1, test=0.1), minus the CSV copy and the lineage digests.
"""

import argparse
import json
import os
import time

import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder


def list_local(source):
    rows = []
    for root, _dirs, files in os.walk(source):
        for name in files:
            path = os.path.join(root, name)
            st = os.stat(path)
            key = os.path.relpath(path, source)
            rows.append((key, st.st_size, f"{st.st_ino:x}-{st.st_mtime_ns:x}", st.st_mtime))
    return rows, "file://" + os.path.abspath(source) + "/"


def list_s3(source, latency_ms):
    import boto3

    bucket, _, prefix = source[len("s3://"):].partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    s3 = boto3.client("s3")
    rows = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        if latency_ms:
            time.sleep(latency_ms / 1000.0)
        for obj in page.get("Contents", []):
            key = obj["Key"][len(prefix):]
            rows.append((key, obj["Size"], obj["ETag"], obj["LastModified"].timestamp()))
    return rows, f"s3://{bucket}/{prefix}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency-ms", type=float, default=0)
    args = parser.parse_args()

    if args.source.startswith("s3://"):
        rows, prefix = list_s3(args.source, args.latency_ms)
    else:
        rows, prefix = list_local(args.source)

    df = pd.DataFrame(rows, columns=["key", "size", "etag", "last_modified"])
    df["last_modified"] = pd.to_datetime(df["last_modified"], unit="s", utc=True)
    df["class_label"] = df["key"].str.split("/").str[0]
    encoder = LabelEncoder()
    df["label"] = encoder.fit_transform(df["class_label"])

    train, rest = train_test_split(df, test_size=0.2, stratify=df["label"], random_state=args.seed)
    validation, test = train_test_split(rest, test_size=0.5, stratify=rest["label"], random_state=args.seed)
    df["channel"] = "train"
    df.loc[validation.index, "channel"] = "validation"
    df.loc[test.index, "channel"] = "test"

    os.makedirs(args.out, exist_ok=True)
    for channel, part in (("train", train), ("validation", validation), ("test", test)):
        with open(os.path.join(args.out, f"{channel}.manifest"), "w") as f:
            json.dump([{"prefix": prefix}] + sorted(part["key"].tolist()), f)
    with open(os.path.join(args.out, "labels.json"), "w") as f:
        json.dump({"classes": encoder.classes_.tolist()}, f)
    df = df.sort_values("key")
    df[["key", "class_label", "label", "channel", "size", "etag", "last_modified"]].to_parquet(
        os.path.join(args.out, "dataset.parquet"), index=False
    )


if __name__ == "__main__":
    main()
