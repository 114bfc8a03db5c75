"""Versions, aliases with weighted routing, and reserved concurrency through boto3."""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from functions import create, make_zip, unique

V1 = "def handler(e, c):\n    return {'v': 1, 'version': c.function_version}\n"
V2 = "def handler(e, c):\n    return {'v': 2, 'version': c.function_version}\n"


def result(lam, name, qualifier=None):
    kwargs = {"Qualifier": qualifier} if qualifier else {}
    resp = lam.invoke(FunctionName=name, Payload=b"{}", **kwargs)
    return json.loads(resp["Payload"].read()), resp["ExecutedVersion"]


class TestVersions:
    def test_publish_and_invoke_versions(self, lam):
        """Published versions keep their code; $LATEST moves on; ARNs are qualified."""
        name = unique("ver")
        create(lam, name, {"app.py": V1})
        v1 = lam.publish_version(FunctionName=name, Description="first")
        assert v1["Version"] == "1" and v1["FunctionArn"].endswith(f":{name}:1")
        assert v1["ResponseMetadata"]["HTTPStatusCode"] == 201
        lam.update_function_code(FunctionName=name, ZipFile=make_zip({"app.py": V2}))
        lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        v2 = lam.publish_version(FunctionName=name)
        assert v2["Version"] == "2"
        assert result(lam, name, "1") == ({"v": 1, "version": "1"}, "1")
        assert result(lam, name, "2") == ({"v": 2, "version": "2"}, "2")
        assert result(lam, name) == ({"v": 2, "version": "$LATEST"}, "$LATEST")
        listed = [v["Version"] for v in lam.list_versions_by_function(FunctionName=name)
                  ["Versions"]]
        assert listed == ["$LATEST", "1", "2"]
        conf = lam.get_function_configuration(FunctionName=name, Qualifier="1")
        assert conf["Version"] == "1" and conf["Description"] == "first"

    def test_publishing_unchanged_code_returns_the_same_version(self, lam):
        """Publishing twice without changes returns the existing version."""
        name = unique("same")
        create(lam, name, {"app.py": V1})
        assert lam.publish_version(FunctionName=name)["Version"] == "1"
        assert lam.publish_version(FunctionName=name)["Version"] == "1"

    def test_delete_version(self, lam):
        """A version can be deleted unless an alias points at it."""
        name = unique("delver")
        create(lam, name, {"app.py": V1})
        lam.publish_version(FunctionName=name)
        lam.create_alias(FunctionName=name, Name="live", FunctionVersion="1")
        with pytest.raises(ClientError) as exc:
            lam.delete_function(FunctionName=name, Qualifier="1")
        assert exc.value.response["Error"]["Code"] == "ResourceConflictException"
        lam.delete_alias(FunctionName=name, Name="live")
        lam.delete_function(FunctionName=name, Qualifier="1")
        with pytest.raises(ClientError) as exc:
            lam.get_function(FunctionName=name, Qualifier="1")
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"


class TestAliases:
    def test_alias_crud_and_invoke(self, lam):
        """An alias resolves to its version and reports it as the executed version."""
        name = unique("alias")
        create(lam, name, {"app.py": V1})
        lam.publish_version(FunctionName=name)
        alias = lam.create_alias(FunctionName=name, Name="prod", FunctionVersion="1")
        assert alias["AliasArn"].endswith(f":{name}:prod")
        assert result(lam, name, "prod")[1] == "1"
        assert result(lam, f"{name}:prod")[1] == "1"
        lam.update_alias(FunctionName=name, Name="prod", Description="d")
        assert lam.get_alias(FunctionName=name, Name="prod")["Description"] == "d"
        assert [a["Name"] for a in lam.list_aliases(FunctionName=name)["Aliases"]] == ["prod"]

    def test_weighted_routing(self, lam):
        """An alias with a 50% additional version weight sends traffic to both versions."""
        name = unique("weights")
        create(lam, name, {"app.py": V1})
        lam.publish_version(FunctionName=name)
        lam.update_function_code(FunctionName=name, ZipFile=make_zip({"app.py": V2}))
        lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        lam.publish_version(FunctionName=name)
        lam.create_alias(FunctionName=name, Name="canary", FunctionVersion="1",
                         RoutingConfig={"AdditionalVersionWeights": {"2": 0.5}})
        seen = {result(lam, name, "canary")[1] for _ in range(40)}
        assert seen == {"1", "2"}

    def test_unknown_alias(self, lam):
        """Getting an alias that does not exist is ResourceNotFoundException."""
        name = unique("noalias")
        create(lam, name, {"app.py": V1})
        with pytest.raises(ClientError) as exc:
            lam.get_alias(FunctionName=name, Name="nope")
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"


class TestReservedConcurrency:
    def test_zero_throttles_everything(self, lam):
        """Reserved concurrency 0 throttles every invoke with the reserved-limit reason."""
        name = unique("zero")
        create(lam, name, {"app.py": V1})
        assert lam.put_function_concurrency(
            FunctionName=name, ReservedConcurrentExecutions=0
        )["ReservedConcurrentExecutions"] == 0
        assert lam.get_function_concurrency(FunctionName=name)[
            "ReservedConcurrentExecutions"] == 0
        with pytest.raises(ClientError) as exc:
            lam.invoke(FunctionName=name, Payload=b"{}")
        assert exc.value.response["Error"]["Code"] == "TooManyRequestsException"
        assert exc.value.response["Reason"] == \
            "ReservedFunctionConcurrentInvocationLimitExceeded"
        settings = lam.get_account_settings()["AccountLimit"]
        assert settings["UnreservedConcurrentExecutions"] == 1000
        lam.delete_function_concurrency(FunctionName=name)
        assert result(lam, name)[0]["v"] == 1

    def test_reservation_limits_parallel_invokes(self, lam):
        """With two reserved, a third concurrent invoke is throttled."""
        name = unique("two")
        create(lam, name, {"app.py": "import time\ndef handler(e, c):\n"
                                     "    time.sleep(1.5)\n    return 1\n"})
        lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=2)
        outcomes: list[str] = []
        lock = threading.Lock()

        def call(_: int) -> None:
            try:
                lam.invoke(FunctionName=name, Payload=b"{}")
                outcome = "ok"
            except ClientError as exc:
                outcome = exc.response["Error"]["Code"]
            with lock:
                outcomes.append(outcome)

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(call, range(3)))
        assert sorted(outcomes) == ["TooManyRequestsException", "ok", "ok"]

    def test_reservation_cannot_starve_the_account(self, lam):
        """Reserving more than the account limit minus 100 is refused."""
        name = unique("greedy")
        create(lam, name, {"app.py": V1})
        with pytest.raises(ClientError) as exc:
            lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=950)
        assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"


class TestProvisionedConcurrency:
    def test_provisioned_instances_are_ready_before_invokes(self, lam):
        """Provisioned concurrency starts initialized instances; invokes use them warm."""
        name = unique("prov")
        code = ("import os\nINIT = os.environ['AWS_LAMBDA_INITIALIZATION_TYPE']\n"
                "def handler(e, c):\n    return INIT\n")
        create(lam, name, {"app.py": code})
        lam.publish_version(FunctionName=name)
        put = lam.put_provisioned_concurrency_config(
            FunctionName=name, Qualifier="1", ProvisionedConcurrentExecutions=2)
        assert put["RequestedProvisionedConcurrentExecutions"] == 2
        deadline = time.monotonic() + 20
        status = {}
        while time.monotonic() < deadline:
            status = lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier="1")
            if status["Status"] == "READY":
                break
            time.sleep(0.2)
        assert status["Status"] == "READY"
        assert status["AllocatedProvisionedConcurrentExecutions"] == 2
        resp = lam.invoke(FunctionName=name, Qualifier="1", Payload=b"{}", LogType="Tail")
        assert json.loads(resp["Payload"].read()) == "provisioned-concurrency"
        assert "Init Duration" not in base64.b64decode(resp["LogResult"]).decode()
        listed = lam.list_provisioned_concurrency_configs(FunctionName=name)
        assert [c["FunctionArn"].rsplit(":", 1)[1] for c in
                listed["ProvisionedConcurrencyConfigs"]] == ["1"]
        lam.delete_provisioned_concurrency_config(FunctionName=name, Qualifier="1")
        with pytest.raises(ClientError) as exc:
            lam.get_provisioned_concurrency_config(FunctionName=name, Qualifier="1")
        assert exc.value.response["Error"]["Code"] == \
            "ProvisionedConcurrencyConfigNotFoundException"

    def test_latest_cannot_be_provisioned(self, lam):
        """$LATEST cannot carry provisioned concurrency."""
        name = unique("provlatest")
        create(lam, name, {"app.py": V1})
        with pytest.raises(ClientError) as exc:
            lam.put_provisioned_concurrency_config(
                FunctionName=name, Qualifier="$LATEST", ProvisionedConcurrentExecutions=1)
        assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"
