"""The Lambda function resource through boto3 against a real server: CRUD, paging, tags, errors."""

from __future__ import annotations

import base64
import hashlib
import io
import urllib.request
import zipfile

import pytest
from botocore.exceptions import ClientError

from functions import PY_ADD, ROLE, create, make_zip, unique


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


class TestCreateAndRead:
    def test_create_returns_configuration_in_aws_format(self, lam):
        """CreateFunction answers 201 with the configuration fields waiters and tools read."""
        name = unique("cfg")
        package = make_zip({"app.py": PY_ADD})
        resp = lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                   Handler="app.handler", Code={"ZipFile": package},
                                   MemorySize=256, Timeout=10,
                                   Environment={"Variables": {"A": "1"}})
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 201
        assert resp["FunctionArn"] == f"arn:aws:lambda:us-east-1:000000000000:function:{name}"
        assert resp["State"] == "Active"
        assert resp["LastUpdateStatus"] == "Successful"
        assert resp["CodeSha256"] == base64.b64encode(hashlib.sha256(package).digest()).decode()
        assert resp["CodeSize"] == len(package)
        assert resp["MemorySize"] == 256 and resp["Timeout"] == 10
        assert resp["Version"] == "$LATEST"
        assert resp["Environment"] == {"Variables": {"A": "1"}}
        assert len(resp["RevisionId"]) == 36
        assert resp["LastModified"].endswith("+0000") and "T" in resp["LastModified"]

    def test_get_function_code_location_serves_the_zip(self, lam):
        """GetFunction's Code.Location downloads the exact package that was uploaded."""
        name = unique("loc")
        package = make_zip({"app.py": PY_ADD})
        lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                            Handler="app.handler", Code={"ZipFile": package})
        got = lam.get_function(FunctionName=name)
        with urllib.request.urlopen(got["Code"]["Location"]) as resp:
            assert resp.read() == package
        assert got["Configuration"]["FunctionName"] == name

    def test_name_forms_are_accepted(self, lam):
        """A function can be named by name, partial ARN or full ARN."""
        name = unique("forms")
        create(lam, name, {"app.py": PY_ADD})
        arn = f"arn:aws:lambda:us-east-1:000000000000:function:{name}"
        for ref in (name, f"000000000000:function:{name}", arn, f"{name}:$LATEST"):
            assert lam.get_function_configuration(FunctionName=ref)["FunctionName"] == name

    def test_waiters_finish(self, lam):
        """boto3's function_active_v2 and function_updated_v2 waiters complete."""
        name = unique("wait")
        create(lam, name, {"app.py": PY_ADD})
        lam.update_function_configuration(FunctionName=name, Timeout=5)
        lam.get_waiter("function_updated_v2").wait(FunctionName=name)


class TestUpdateDeleteList:
    def test_update_code_and_configuration(self, lam):
        """Updates change the code hash, the settings and the RevisionId."""
        name = unique("upd")
        first = create(lam, name, {"app.py": PY_ADD})
        new_zip = make_zip({"app.py": "def handler(e, c):\n    return 'v2'\n"})
        updated = lam.update_function_code(FunctionName=name, ZipFile=new_zip)
        assert updated["CodeSha256"] != first["CodeSha256"]
        assert updated["RevisionId"] != first["RevisionId"]
        conf = lam.update_function_configuration(FunctionName=name, MemorySize=512,
                                                 Description="d")
        assert conf["MemorySize"] == 512 and conf["Description"] == "d"
        assert lam.invoke(FunctionName=name)["Payload"].read() == b'"v2"'

    def test_revision_id_mismatch_is_refused(self, lam):
        """A stale RevisionId gives PreconditionFailedException."""
        name = unique("rev")
        create(lam, name, {"app.py": PY_ADD})
        with pytest.raises(ClientError) as exc:
            lam.update_function_configuration(FunctionName=name, Timeout=4,
                                              RevisionId="00000000-0000-0000-0000-000000000000")
        assert error_code(exc) == "PreconditionFailedException"

    def test_delete_then_not_found(self, lam):
        """After DeleteFunction the function is gone with Lambda's 404 message."""
        name = unique("del")
        create(lam, name, {"app.py": PY_ADD})
        lam.delete_function(FunctionName=name)
        with pytest.raises(ClientError) as exc:
            lam.get_function(FunctionName=name)
        assert error_code(exc) == "ResourceNotFoundException"
        assert exc.value.response["Error"]["Message"] == (
            f"Function not found: arn:aws:lambda:us-east-1:000000000000:function:{name}")

    def test_list_functions_pages_with_marker(self, lam):
        """ListFunctions pages through every function with Marker/MaxItems."""
        names = {unique("page") for _ in range(5)}
        for name in names:
            create(lam, name, {"app.py": PY_ADD}, wait=False)
        seen: list[str] = []
        for page in lam.get_paginator("list_functions").paginate(
                PaginationConfig={"PageSize": 2}):
            assert len(page["Functions"]) <= 2
            seen += [f["FunctionName"] for f in page["Functions"]]
        assert names <= set(seen)
        assert len(seen) == len(set(seen))


class TestTagsAndAccount:
    def test_tag_untag_list(self, lam):
        """Tags can be added, listed and removed by function ARN."""
        name = unique("tags")
        arn = create(lam, name, {"app.py": PY_ADD}, Tags={"team": "a"})["FunctionArn"]
        lam.tag_resource(Resource=arn, Tags={"env": "dev", "x": "y"})
        assert lam.list_tags(Resource=arn)["Tags"] == {"team": "a", "env": "dev", "x": "y"}
        lam.untag_resource(Resource=arn, TagKeys=["x", "team"])
        assert lam.list_tags(Resource=arn)["Tags"] == {"env": "dev"}
        assert lam.get_function(FunctionName=name)["Tags"] == {"env": "dev"}

    def test_account_settings(self, lam):
        """GetAccountSettings reports the default limits and the usage."""
        settings = lam.get_account_settings()
        assert settings["AccountLimit"]["ConcurrentExecutions"] == 1000
        assert settings["AccountLimit"]["CodeSizeZipped"] == 52428800
        assert settings["AccountUsage"]["FunctionCount"] >= 0


class TestValidation:
    @pytest.mark.parametrize("memory", [130, 3072, 20000])
    def test_invalid_memory_size(self, lam, memory):
        """Memory outside 128-3008 MB in 64 MB steps is an InvalidParameterValueException."""
        with pytest.raises(ClientError) as exc:
            create(lam, unique("mem"), {"app.py": PY_ADD}, MemorySize=memory, wait=False)
        assert error_code(exc) == "InvalidParameterValueException"
        assert "memorySize" in exc.value.response["Error"]["Message"]

    def test_invalid_timeout(self, lam):
        """A timeout over 900 seconds is refused."""
        with pytest.raises(ClientError) as exc:
            create(lam, unique("tmo"), {"app.py": PY_ADD}, Timeout=901, wait=False)
        assert error_code(exc) == "InvalidParameterValueException"

    def test_unknown_runtime(self, lam):
        """A runtime not available on this host is refused."""
        with pytest.raises(ClientError) as exc:
            create(lam, unique("rt"), {"app.py": PY_ADD}, runtime="java21", wait=False)
        assert error_code(exc) == "InvalidParameterValueException"

    def test_duplicate_is_conflict(self, lam):
        """Creating an existing name is a ResourceConflictException."""
        name = unique("dup")
        create(lam, name, {"app.py": PY_ADD}, wait=False)
        with pytest.raises(ClientError) as exc:
            create(lam, name, {"app.py": PY_ADD}, wait=False)
        assert error_code(exc) == "ResourceConflictException"

    @pytest.mark.parametrize("entry", ["../evil.py", "/etc/evil.py", "a/../../evil.py"])
    def test_zip_slip_is_refused_and_nothing_created(self, lam, entry):
        """An archive entry escaping the code directory is refused and no function remains."""
        name = unique("slip")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("app.py", PY_ADD)
            zf.writestr(zipfile.ZipInfo(entry), "x = 1\n")
        with pytest.raises(ClientError) as exc:
            lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                Handler="app.handler", Code={"ZipFile": buf.getvalue()})
        assert error_code(exc) == "InvalidParameterValueException"
        with pytest.raises(ClientError) as missing:
            lam.get_function(FunctionName=name)
        assert error_code(missing) == "ResourceNotFoundException"

    def test_not_a_zip(self, lam):
        """Bytes that are not a zip archive are refused."""
        with pytest.raises(ClientError) as exc:
            lam.create_function(FunctionName=unique("nz"), Runtime="python3.11", Role=ROLE,
                                Handler="app.handler", Code={"ZipFile": b"not a zip"})
        assert error_code(exc) == "InvalidParameterValueException"

    def test_bad_handler_and_name(self, lam):
        """A handler without a function part and a malformed name are refused."""
        with pytest.raises(ClientError) as exc:
            create(lam, unique("h"), {"app.py": PY_ADD}, handler="app", wait=False)
        assert error_code(exc) == "InvalidParameterValueException"
        with pytest.raises(ClientError) as exc:
            create(lam, "bad name!", {"app.py": PY_ADD}, wait=False)
        assert error_code(exc) in ("InvalidParameterValueException", "ValidationException")

    def test_reserved_environment_variable(self, lam):
        """Setting a reserved variable such as AWS_REGION is refused."""
        with pytest.raises(ClientError) as exc:
            create(lam, unique("env"), {"app.py": PY_ADD}, wait=False,
                   Environment={"Variables": {"AWS_REGION": "x"}})
        assert error_code(exc) == "InvalidParameterValueException"


class TestAuthentication:
    def test_unknown_key_is_rejected(self, server):
        """A request signed with an unknown access key gets UnrecognizedClientException."""
        import boto3

        client = boto3.client("lambda", endpoint_url=server.endpoint, region_name="us-east-1",
                              aws_access_key_id="AKIAUNKNOWNUNKNOWN00",
                              aws_secret_access_key="x" * 40)
        with pytest.raises(ClientError) as exc:
            client.list_functions()
        assert error_code(exc) == "UnrecognizedClientException"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    def test_wrong_secret_is_rejected(self, server):
        """A request signed with the wrong secret gets InvalidSignatureException."""
        import boto3

        creds = server.credentials
        client = boto3.client("lambda", endpoint_url=server.endpoint, region_name="us-east-1",
                              aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key="y" * 40)
        with pytest.raises(ClientError) as exc:
            client.list_functions()
        assert error_code(exc) == "InvalidSignatureException"

    def test_unsigned_request_is_rejected(self, server):
        """An unsigned HTTP request is refused with 403."""
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"{server.endpoint}/2015-03-31/functions/")
        assert exc.value.code == 403
