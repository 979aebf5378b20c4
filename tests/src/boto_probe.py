"""boto3, an S3 client independent of tessera's, for the tests (tests/src/moto.rs).

Usage: python boto_probe.py ENDPOINT COMMAND ARGS...  (credentials from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY; path-style requests, region us-east-1). Prints one JSON document.

  create-bucket BUCKET lock|plain  create it, with Object Lock or without (retries while the
                                   server is still starting, up to 30 s)
  enable-lock BUCKET               turn on versioning, then Object Lock, on an existing bucket
  list BUCKET PREFIX               the keys under PREFIX (current versions), sorted
  retentions BUCKET PREFIX         {key: [mode, retain-until] or null} for every key under PREFIX
  delete-version BUCKET KEY        delete KEY's current version by its VersionId:
                                   {"deleted": true} or {"error": "CODE: message"}

Retentions are read with HeadObject (the x-amz-object-lock-mode and -retain-until-date
headers, verbatim): moto has no GetObjectRetention (GET ?retention answers the object itself),
SeaweedFS and AWS answer both the same.
"""

import json
import sys
import time

import boto3
import botocore.config
import botocore.exceptions


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}
        ),
    )


def error_text(e):
    err = e.response.get("Error", {})
    return f"{err.get('Code', '?')}: {err.get('Message', '')}"


def keys(s3, bucket, prefix):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(out)


def retention(s3, bucket, key):
    h = s3.head_object(Bucket=bucket, Key=key)["ResponseMetadata"]["HTTPHeaders"]
    mode = h.get("x-amz-object-lock-mode")
    until = h.get("x-amz-object-lock-retain-until-date")
    return [mode, until] if mode or until else None


def create_bucket(s3, bucket, kind):
    deadline = time.monotonic() + 30
    while True:
        try:
            if kind == "lock":
                s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
            else:
                s3.create_bucket(Bucket=bucket)
            return {"created": bucket}
        except botocore.exceptions.EndpointConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def enable_lock(s3, bucket):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object_lock_configuration(
        Bucket=bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
    )
    return s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]


def delete_version(s3, bucket, key):
    version = s3.head_object(Bucket=bucket, Key=key).get("VersionId")
    if not version:
        return {"error": f"NoVersionId: {key} has no version id (versioning off?)"}
    try:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
        return {"deleted": True}
    except botocore.exceptions.ClientError as e:
        return {"error": error_text(e)}


def main(endpoint, command, *args):
    s3 = client(endpoint)
    if command == "create-bucket":
        return create_bucket(s3, *args)
    if command == "enable-lock":
        return enable_lock(s3, *args)
    if command == "list":
        return keys(s3, *args)
    if command == "retentions":
        bucket, prefix = args
        return {k: retention(s3, bucket, k) for k in keys(s3, bucket, prefix)}
    if command == "delete-version":
        return delete_version(s3, *args)
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    json.dump(main(*sys.argv[1:]), sys.stdout)
