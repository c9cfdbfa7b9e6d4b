#!/usr/bin/env python3
"""Captures real S3 and AWS KMS response bodies as fuzz seeds (see fuzz/README.md).

Usage: capture-aws-seeds.py URL ACCESS_KEY SECRET_KEY PREFIX [kms]
Drives the S3 server at URL with boto3 through a multipart upload (Initiate, UploadPart x2, ListParts
with MaxParts=1 so it is truncated, Complete) and the errors around it, and with `kms` also AWS KMS
(CreateKey, Encrypt, Decrypt, ReEncrypt, GenerateDataKey, a bad Decrypt); every response body is
written to fuzz/seeds/s3_xml/PREFIX-OPERATION-STATUS.xml or fuzz/seeds/kms_json/PREFIX-...json.
"""
import os
import sys

import boto3
from botocore.config import Config

url, ak, sk, prefix = sys.argv[1:5]
here = os.path.dirname(os.path.abspath(__file__))
seen = {}


def saver(kind, ext):
    def hook(http_response, model, **_):
        body = http_response.content
        if not body:
            return
        name = f"{prefix}-{model.name}-{http_response.status_code}"
        n = seen.get(name, 0)
        seen[name] = n + 1
        if n:
            name += f"-{n}"
        with open(os.path.join(here, "seeds", kind, name + ext), "wb") as f:
            f.write(body)

    return hook


kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id=ak, aws_secret_access_key=sk,
          config=Config(retries={"max_attempts": 1}))
s3 = boto3.client("s3", **kw)
s3.meta.events.register("after-call.s3", saver("s3_xml", ".xml"))


def attempt(f, *a, **k):
    try:
        return f(*a, **k)
    except Exception as e:  # the error bodies are what we want
        return e


attempt(s3.create_bucket, Bucket="seeds")
up = s3.create_multipart_upload(Bucket="seeds", Key="disk image.qcow2", ChecksumAlgorithm="SHA256")
uid = up["UploadId"]
parts = []
for n, data in [(1, b"a" * 5 * 1024 * 1024), (2, b"tail")]:
    r = s3.upload_part(Bucket="seeds", Key="disk image.qcow2", UploadId=uid, PartNumber=n, Body=data,
                       ChecksumAlgorithm="SHA256")
    parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": r.get("ChecksumSHA256")})
s3.list_parts(Bucket="seeds", Key="disk image.qcow2", UploadId=uid, MaxParts=1)
s3.list_parts(Bucket="seeds", Key="disk image.qcow2", UploadId=uid)
s3.complete_multipart_upload(Bucket="seeds", Key="disk image.qcow2", UploadId=uid,
                             MultipartUpload={"Parts": [{k: v for k, v in p.items() if v} for p in parts]})
attempt(s3.list_parts, Bucket="seeds", Key="disk image.qcow2", UploadId=uid)
attempt(s3.complete_multipart_upload, Bucket="seeds", Key="disk image.qcow2", UploadId="no-such-upload",
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00"'}]})
attempt(s3.get_object, Bucket="seeds", Key="missing")
attempt(s3.create_multipart_upload, Bucket="no-such-bucket", Key="k")
attempt(s3.abort_multipart_upload, Bucket="seeds", Key="k", UploadId="no-such-upload")

if len(sys.argv) > 5 and sys.argv[5] == "kms":
    kms = boto3.client("kms", **kw)
    kms.meta.events.register("after-call.kms", saver("kms_json", ".json"))
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"Y29ycmVjdCBob3JzZQ==")["CiphertextBlob"]
    kms.decrypt(KeyId=key, CiphertextBlob=blob)
    kms.re_encrypt(CiphertextBlob=blob, DestinationKeyId=key)
    kms.generate_data_key(KeyId=key, KeySpec="AES_256")
    attempt(kms.decrypt, CiphertextBlob=b"not a ciphertext blob at all")
    attempt(kms.encrypt, KeyId="alias/missing", Plaintext=b"x")
