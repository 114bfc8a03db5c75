"""CreateFunction and UpdateFunctionCode with S3Bucket/S3Key, fetched from a real S3-compatible
endpoint (moto_server) named by the server's standard SDK configuration."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from functions import ROLE, make_zip, unique
from moto_server import moto_endpoint  # noqa: F401


@pytest.fixture(scope="module")
def bucket_server(make_server_module, moto_endpoint):  # noqa: F811
    srv = make_server_module(extra_env=moto_endpoint.server_env())
    s3 = moto_endpoint.client("s3")
    bucket = unique("code")
    s3.create_bucket(Bucket=bucket)
    return srv, s3, bucket


class TestCodeFromBucket:
    def test_create_and_update_from_bucket(self, bucket_server):
        """A package in a bucket becomes the function's code, and so does a new one."""
        srv, s3, bucket = bucket_server
        lam = srv.client()
        s3.put_object(Bucket=bucket, Key="v1.zip", Body=make_zip(
            {"app.py": "def handler(e, c):\n    return 'from-bucket-1'\n"}))
        s3.put_object(Bucket=bucket, Key="v2.zip", Body=make_zip(
            {"app.py": "def handler(e, c):\n    return 'from-bucket-2'\n"}))
        name = unique("s3fn")
        lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                            Handler="app.handler", Code={"S3Bucket": bucket, "S3Key": "v1.zip"})
        lam.get_waiter("function_active_v2").wait(FunctionName=name)
        assert lam.invoke(FunctionName=name)["Payload"].read() == b'"from-bucket-1"'
        lam.update_function_code(FunctionName=name, S3Bucket=bucket, S3Key="v2.zip")
        lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        assert lam.invoke(FunctionName=name)["Payload"].read() == b'"from-bucket-2"'

    def test_missing_key(self, bucket_server):
        """A key that does not exist gives Lambda's GetObject error and no function."""
        srv, _, bucket = bucket_server
        lam = srv.client()
        name = unique("s3missing")
        with pytest.raises(ClientError) as exc:
            lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                Handler="app.handler",
                                Code={"S3Bucket": bucket, "S3Key": "nope.zip"})
        assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"
        assert "NoSuchKey" in exc.value.response["Error"]["Message"]
        with pytest.raises(ClientError):
            lam.get_function(FunctionName=name)
