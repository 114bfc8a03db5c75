"""Function code from a bucket, read from a real moto server."""

from __future__ import annotations

import uuid

import pytest

from corral.errors import InvalidParameterValueException
from corral.triggers.s3code import code_location, fetch_zip
from moto_server import MotoServer, moto_endpoint  # noqa: F401


@pytest.fixture
def bucket(moto_endpoint: MotoServer) -> str:  # noqa: F811
    """A versioned bucket holding code.zip twice (two versions)."""
    s3 = moto_endpoint.client("s3")
    name = f"code-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def env(moto: MotoServer) -> dict[str, str]:
    return moto.server_env()


def test_fetch_latest_and_version(moto_endpoint, bucket):  # noqa: F811
    """The newest object, or a given version, is returned byte for byte."""
    s3 = moto_endpoint.client("s3")
    first = s3.put_object(Bucket=bucket, Key="code.zip", Body=b"PK-one")["VersionId"]
    s3.put_object(Bucket=bucket, Key="code.zip", Body=b"PK-two")
    assert fetch_zip(bucket, "code.zip", env=env(moto_endpoint)) == b"PK-two"
    assert fetch_zip(bucket, "code.zip", first, env=env(moto_endpoint)) == b"PK-one"


def test_missing_key(moto_endpoint, bucket):  # noqa: F811
    """A missing key is Lambda's InvalidParameterValueException text."""
    with pytest.raises(InvalidParameterValueException) as exc:
        fetch_zip(bucket, "nope.zip", env=env(moto_endpoint))
    assert exc.value.message == ("Error occurred while GetObject. S3 Error Code: NoSuchKey. "
                                 "S3 Error Message: The specified key does not exist.")


def test_missing_bucket(moto_endpoint):  # noqa: F811
    """A missing bucket names NoSuchBucket."""
    with pytest.raises(InvalidParameterValueException) as exc:
        fetch_zip("no-such-bucket-here", "x.zip", env=env(moto_endpoint))
    assert "S3 Error Code: NoSuchBucket" in exc.value.message


def test_size_limit(moto_endpoint, bucket):  # noqa: F811
    """Objects over the limit are refused."""
    moto_endpoint.client("s3").put_object(Bucket=bucket, Key="big.zip", Body=b"x" * 100)
    with pytest.raises(InvalidParameterValueException):
        fetch_zip(bucket, "big.zip", max_bytes=10, env=env(moto_endpoint))


def test_unreachable_endpoint():
    """An endpoint nobody listens on is an InvalidParameterValueException too."""
    dead = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "y"}
    with pytest.raises(InvalidParameterValueException) as exc:
        fetch_zip("b", "k", env=dead)
    assert "GetObject" in exc.value.message


def test_code_location():
    """S3Bucket and S3Key are required together; S3ObjectVersion is optional."""
    assert code_location({"S3Bucket": "b", "S3Key": "k"}) == ("b", "k", None)
    assert code_location({"S3Bucket": "b", "S3Key": "k", "S3ObjectVersion": "v"}) == \
        ("b", "k", "v")
    with pytest.raises(InvalidParameterValueException):
        code_location({"S3Key": "k"})
