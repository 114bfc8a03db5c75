"""Pure helpers of the CLI's client side: endpoint/credential resolution, payloads, errors."""

from __future__ import annotations

import io
import json

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from corral.cli.client import CliError, describe_error, resolve_connection, resolve_endpoint
from corral.cli.commands.invoke import decode_payload, format_function_error, read_payload
from corral.iam.keys import KeyStore


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "CORRAL_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CORRAL_DATA_DIR", str(tmp_path / "default-data"))
    return monkeypatch


class TestResolution:
    def test_environment(self, clean_env):
        """AWS_ENDPOINT_URL with keys (what `corral env` exports) is used as is."""
        clean_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234/")
        clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE12")
        clean_env.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        conn = resolve_connection()
        assert (conn.endpoint, conn.access_key_id, conn.secret_access_key) == (
            "http://127.0.0.1:1234", "AKIAEXAMPLEEXAMPLE12", "secret")

    def test_keys_without_endpoint_are_ignored(self, clean_env, tmp_path):
        """Plain AWS keys without AWS_ENDPOINT_URL are not sent to Corral."""
        clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAREALAWSKEY123456")
        clean_env.setenv("AWS_SECRET_ACCESS_KEY", "real")
        root = KeyStore(tmp_path / "default-data" / "keys.json").load_or_create_root()
        conn = resolve_connection()
        assert conn.access_key_id == root.access_key_id
        assert conn.endpoint == "http://127.0.0.1:9009"

    def test_data_dir_flag_beats_environment(self, clean_env, tmp_path):
        """--data-dir takes that dir's root key and the default endpoint (CORRAL_PORT)."""
        clean_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
        clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE12")
        clean_env.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        clean_env.setenv("CORRAL_PORT", "9100")
        root = KeyStore(tmp_path / "d" / "keys.json").load_or_create_root()
        conn = resolve_connection(data_dir=str(tmp_path / "d"))
        assert conn.access_key_id == root.access_key_id
        assert conn.endpoint == "http://127.0.0.1:9100"

    def test_endpoint_flag(self, clean_env):
        """--endpoint-url overrides the environment's endpoint."""
        clean_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
        clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE12")
        clean_env.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        assert resolve_endpoint("http://h:5/", None) == "http://h:5"
        assert resolve_connection("http://h:5").endpoint == "http://h:5"

    def test_no_credentials_anywhere(self, clean_env, tmp_path):
        """Without keys anywhere the error says how to get some, and nothing is created."""
        with pytest.raises(CliError, match="corral env"):
            resolve_connection()
        assert not (tmp_path / "default-data" / "keys.json").exists()


class TestErrors:
    def test_client_error(self):
        """A ClientError becomes `Code: Message`."""
        exc = ClientError({"Error": {"Code": "ResourceNotFoundException",
                                     "Message": "Function not found: arn:x"}}, "GetFunction")
        assert describe_error(exc) == "ResourceNotFoundException: Function not found: arn:x"

    def test_unreachable(self):
        """A connection error names the endpoint and suggests starting the server."""
        exc = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/2015-03-31/functions/")
        assert describe_error(exc) == ("cannot reach the Corral server at http://127.0.0.1:9: "
                                       "is `corral server` running?")
        assert "http://e:1" in (describe_error(exc, "http://e:1") or "")

    def test_bugs_are_not_described(self):
        """Unexpected exceptions are left to propagate."""
        assert describe_error(KeyError("x")) is None


class TestPayload:
    def test_default_and_inline(self):
        """No payload is {}; inline JSON is sent as given."""
        assert read_payload(None) == b"{}"
        assert read_payload('{"a": 1}') == b'{"a": 1}'

    def test_file_and_stdin(self, tmp_path):
        """@file reads a file, - reads stdin."""
        path = tmp_path / "event.json"
        path.write_text('{"k": "v"}')
        assert json.loads(read_payload(f"@{path}")) == {"k": "v"}
        assert read_payload("-", stdin=io.BytesIO(b"[1, 2]")) == b"[1, 2]"

    def test_invalid(self, tmp_path):
        """Invalid JSON and unreadable files are CliErrors."""
        with pytest.raises(CliError, match="not valid JSON"):
            read_payload("{nope")
        with pytest.raises(CliError, match="cannot read"):
            read_payload(f"@{tmp_path / 'missing.json'}")

    def test_function_error_lines(self):
        """A Lambda error body becomes `Type: message` plus the stack trace."""
        body = json.dumps({"errorType": "ValueError", "errorMessage": "bad",
                           "stackTrace": ['  File "app.py", line 2, in handler\n    x()\n']})
        lines = format_function_error(body.encode(), "Unhandled")
        assert lines[0] == "ValueError: bad"
        assert any("app.py" in line for line in lines[1:])
        assert format_function_error(b"oops", "Unhandled") == ["Unhandled: oops"]

    def test_decode_payload(self):
        """JSON responses are parsed; anything else is text."""
        assert decode_payload(b"30") == 30
        assert decode_payload(b"not json") == "not json"
