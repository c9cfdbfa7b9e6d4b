"""Runs one operation of IBM's official Python SDKs against the fake IBM servers of the agent's tests.

    python sdk.py OP BASE_URL '{"arg": ...}'

BASE_URL is the fake's root (it serves IAM, Key Protect, VPC, SoftLayer and COS on one port). The SDK's
parsed answer is printed as JSON on stdout; any SDK error exits non-zero with the error on stderr. The
Rust contract tests (agent/tests/contract.rs) compare the requests this sends with the agent's.
"""

import json
import sys

API_KEY = "fake-api-key-0123456789"
INSTANCE = "11111111-2222-3333-4444-555555555555"


def iam(base):
    from ibm_cloud_sdk_core.authenticators import IAMAuthenticator

    return IAMAuthenticator(API_KEY, url=base)


def keyprotect(base):
    from keyprotect import ibm_key_protect_api_v2 as kp

    c = kp.IbmKeyProtectApiV2(authenticator=iam(base))
    c.set_service_url(base)
    return c


def vpc(base):
    from ibm_vpc import VpcV1

    c = VpcV1(authenticator=iam(base))
    c.set_service_url(base + "/v1")
    return c


def softlayer(base):
    import SoftLayer

    return SoftLayer.create_client_from_env(
        username="apikey", api_key=API_KEY, endpoint_url=base + "/rest/v3.1/"
    )


def cos(base, a):
    import ibm_boto3
    from ibm_botocore.client import Config

    if a.get("auth") == "iam":
        return ibm_boto3.client(
            "s3",
            ibm_api_key_id=API_KEY,
            ibm_service_instance_id=INSTANCE,
            ibm_auth_endpoint=base + "/identity/token",
            endpoint_url=base,
            config=Config(signature_version="oauth", s3={"addressing_style": "path"}),
        )
    cfg = Config(signature_version="s3v4", s3={"addressing_style": "path"})
    return ibm_boto3.client(
        "s3",
        aws_access_key_id=a.get("access_key", "AKFAKE"),
        aws_secret_access_key=a.get("secret_key", "fake-secret"),
        region_name=a.get("region", "us-south"),
        endpoint_url=base,
        config=cfg,
    )


def run(op, base, a):
    if op == "iam_token":
        return {"token": iam(base).token_manager.get_token()}
    if op.startswith("kp_"):
        c = keyprotect(base)
        key, inst = a["key"], a.get("instance", INSTANCE)
        if op == "kp_get_key":
            return c.get_key(key, inst).get_result()
        if op == "kp_wrap":
            body = {"plaintext": a["plaintext"]} if "plaintext" in a else {}
            return c.wrap_key(key, inst, key_action_wrap_body=body).get_result()
        if op == "kp_unwrap":
            return c.unwrap_key(key, inst, {"ciphertext": a["ciphertext"]}).get_result()
        if op == "kp_rewrap":
            return c.rewrap_key(key, inst, {"ciphertext": a["ciphertext"]}).get_result()
    if op.startswith("vpc_"):
        c = vpc(base)
        if op == "vpc_create_image":
            proto = {
                "name": a["name"],
                "file": {"href": a["href"]},
                "operating_system": {"name": a["os"]},
                "encrypted_data_key": a["wdek"],
                "encryption_key": {"crn": a["crn"]},
            }
            return c.create_image(proto).get_result()
        if op == "vpc_get_image":
            return c.get_image(a["id"]).get_result()
        if op == "vpc_list_images":
            return c.list_images(name=a["name"], limit=a.get("limit")).get_result()
        if op == "vpc_list_vpcs":
            return c.list_vpcs(limit=a.get("limit")).get_result()
        if op == "vpc_list_subnets":
            return c.list_subnets(limit=a.get("limit"), vpc_id=a.get("vpc_id")).get_result()
        if op == "vpc_list_keys":
            return c.list_keys(limit=a.get("limit")).get_result()
        if op == "vpc_list_instance_profiles":
            return c.list_instance_profiles(limit=a.get("limit")).get_result()
        if op == "vpc_list_instances":
            return c.list_instances(name=a["name"], limit=a.get("limit")).get_result()
        if op == "vpc_create_instance":
            from ibm_vpc.vpc_v1 import (
                InstancePrototypeInstanceByImageInstanceByImageInstanceByNetworkInterface as ByImage,
            )

            return c.create_instance(ByImage.from_dict(a["prototype"])).get_result()
        if op == "vpc_get_instance":
            return c.get_instance(a["id"]).get_result()
        if op == "vpc_get_volume":
            return c.get_volume(a["id"]).get_result()
    if op.startswith("sl_"):
        c = softlayer(base)
        if op == "sl_create_from_icos":
            from SoftLayer.managers.image import ImageManager

            return ImageManager(c).import_image_from_uri(
                a["name"],
                a["uri"],
                os_code=a["os"],
                note=a["note"],
                ibm_api_key=API_KEY,
                root_key_crn=a["crn"],
                wrapped_dek=a["wdek"],
                cloud_init=True,
                byol=False,
                is_encrypted=True,
            )
        if op == "sl_get_object":
            from SoftLayer.CLI import image as image_mod
            from SoftLayer.managers.image import ImageManager

            return ImageManager(c).get_image(a["id"], mask=image_mod.DETAIL_MASK)
        if op in ("sl_create_guest", "sl_verify_guest"):
            from SoftLayer.managers.vs import VSManager

            vs = VSManager(c)
            if op == "sl_verify_guest":
                return vs.order_guest(dict(a["guest"]), test=True)
            return vs.create_instance(**a["guest"])
        if op == "sl_find_guest":
            from SoftLayer.managers.vs import VSManager

            return list(VSManager(c).list_instances(hostname=a["hostname"], domain=a["domain"], mask=a["mask"]))
        if op == "sl_get_guest":
            from SoftLayer.managers.vs import VSManager

            return VSManager(c).get_instance(a["id"], mask=a["mask"])
        if op == "sl_ssh_keys":
            from SoftLayer.managers.sshkey import SshKeyManager

            return SshKeyManager(c).list_keys(label=a["label"])
        if op == "sl_find_by_name":
            from SoftLayer.managers.image import ImageManager

            return list(ImageManager(c).list_private_images(name=a["name"]))
    if op.startswith("cos_"):
        c = cos(base, a)
        b, k = a["bucket"], a["key"]
        if op == "cos_create":
            r = c.create_multipart_upload(Bucket=b, Key=k, ChecksumAlgorithm="SHA256")
            return {"UploadId": r["UploadId"]}
        if op == "cos_part":
            data = bytes.fromhex(a["hex"])
            r = c.upload_part(
                Bucket=b, Key=k, UploadId=a["upload_id"], PartNumber=1, Body=data,
                ChecksumAlgorithm="SHA256",
            )
            return {"ETag": r["ETag"]}
        if op == "cos_complete":
            r = c.complete_multipart_upload(
                Bucket=b, Key=k, UploadId=a["upload_id"],
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": a["etag"], "ChecksumSHA256": a["sha256_b64"]}]},
            )
            return {"ETag": r.get("ETag")}
        if op == "cos_head":
            r = c.head_object(Bucket=b, Key=k)
            return {"ContentLength": r["ContentLength"], "ETag": r["ETag"]}
    raise SystemExit(f"unknown operation {op}")


def main():
    op, base = sys.argv[1], sys.argv[2].rstrip("/")
    a = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    print(json.dumps(run(op, base, a), default=str))


if __name__ == "__main__":
    main()
