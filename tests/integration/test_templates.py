"""Per-version templates through the real server: further instances of a Python version fork
from an initialized template, each still an instance of its own (boto3, Linux sandbox)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.request
from typing import Any

import pytest

from functions import create, make_zip, unique

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or os.environ.get("CORRAL_TEST_SANDBOX") == "process",
    reason="templates need root and the Linux sandbox")

# Init takes a while and leaves a marker: instances forked from one template share it.
APP = '''
import ctypes, os, random, time, uuid
time.sleep(0.3)  # a slow init (what the template saves further instances)
INIT_ID = uuid.uuid4().hex
RESTORED = []
BEFORE = []

from snapshot_restore_py import register_after_restore, register_before_snapshot


@register_before_snapshot
def _before():
    BEFORE.append(os.environ["AWS_LAMBDA_LOG_STREAM_NAME"])


@register_after_restore
def _after():
    RESTORED.append(os.environ["AWS_LAMBDA_LOG_STREAM_NAME"])


libc = ctypes.CDLL(None, use_errno=True)


def _errno(ret):
    return ctypes.get_errno() if ret != 0 else 0


def handler(event, context):
    if event.get("write"):
        with open("/tmp/mark", "w") as f:
            f.write(event["write"])
    time.sleep(event.get("sleep", 0))
    if event.get("exit") is not None:
        os._exit(event["exit"])
    if event.get("net_port"):
        import socket
        try:
            socket.create_connection(("127.0.0.1", event["net_port"]), timeout=2).close()
            host = "reachable"
        except OSError as exc:
            host = type(exc).__name__
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        socket.create_connection(listener.getsockname(), timeout=2).close()
        return {"host": host, "loopback": "ok", "init": INIT_ID}
    if event.get("fill_tmp_mb"):
        written, err = 0, None
        chunk = b"x" * (1024 * 1024)
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(event["fill_tmp_mb"]):
                    f.write(chunk)
                    written += 1
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            err = exc.errno
        os.unlink("/tmp/fill")
        return {"errno": err, "written_mb": written, "init": INIT_ID}
    if event.get("allocate_mb"):
        blocks = [bytearray(1024 * 1024) for _ in range(event["allocate_mb"])]
        return len(blocks)
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return {
        "init": INIT_ID,
        "stream": context.log_stream_name,
        "env_stream": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"],
        "init_type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"],
        "random": random.random(),
        "tmp": sorted(os.listdir("/tmp")),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "restored": RESTORED,
        "before": BEFORE,
        "cap_eff": status["CapEff"].strip(),
        "cap_bnd": status["CapBnd"].strip(),
        "uid": status["Uid"].split()[0],
        "seccomp_filters": int(status.get("Seccomp_filters", "0")),
        "unshare": _errno(libc.unshare(0x10000000)),  # CLONE_NEWUSER
        "mount": _errno(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None)),
    }
'''


@pytest.fixture(scope="module")
def srv(make_server_module: Any) -> Any:
    return make_server_module()


@pytest.fixture(scope="module")
def lam(srv: Any) -> Any:
    return srv.client("lambda")


def templates_ready(srv: Any) -> int:
    with urllib.request.urlopen(f"{srv.endpoint}/_corral/health", timeout=5) as resp:
        return int(json.load(resp)["instances"]["templates"])


def wait_for_templates(srv: Any, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while templates_ready(srv) < count:
        assert time.monotonic() < deadline, "the template did not become ready"
        time.sleep(0.1)


def invoke(lam: Any, name: str, event: dict[str, Any]) -> tuple[dict[str, Any], str, Any]:
    resp = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode(), LogType="Tail")
    tail = base64.b64decode(resp["LogResult"]).decode()
    report = next(line for line in tail.splitlines() if line.startswith("REPORT"))
    return json.loads(resp["Payload"].read()), report, resp.get("FunctionError")


def concurrently(lam: Any, name: str, events: list[dict[str, Any]]) -> list[Any]:
    """Invoke with every event at once (each occupies its own instance). The first event
    goes first, so that it is the one that takes the version's idle instance if any."""
    results: list[Any] = [None] * len(events)

    def run(i: int) -> None:
        results[i] = invoke(lam, name, events[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(events))]
    for index, thread in enumerate(threads):
        thread.start()
        if index == 0:
            time.sleep(0.3)
    for thread in threads:
        thread.join(60)
    return results


@pytest.fixture(scope="module")
def forked(srv: Any, lam: Any) -> dict[str, Any]:
    """A version with a ready template, its first instance, and two forked instances."""
    before = templates_ready(srv)
    name = unique("tpl")
    create(lam, name, {"app.py": APP})
    first, first_report, _ = invoke(lam, name, {})
    wait_for_templates(srv, before + 1)
    # the first instance is held busy, so both others are new instances
    results = concurrently(lam, name, [{"sleep": 1.5}, {"sleep": 0.5, "write": "a"},
                                       {"sleep": 0.5, "write": "b"}])
    return {"name": name, "first": first, "first_report": first_report,
            "others": [r for r in results if r[0]["init"] != first["init"]],
            "all": results}


class TestTemplates:
    def test_further_instances_skip_init(self, forked: dict[str, Any]) -> None:
        """Two new instances started after the template was ready share one init (the
        template's), different from the first instance's, and each reports a cold start."""
        others = forked["others"]
        assert len(others) == 2, [r[0]["init"] for r in forked["all"]]
        assert others[0][0]["init"] == others[1][0]["init"]
        for _body, report, error in others:
            assert error is None
            assert "Init Duration" in report
        assert "Init Duration" in forked["first_report"]

    def test_each_instance_has_its_own_identity(self, forked: dict[str, Any]) -> None:
        """Log stream, environment, random state and after-restore hooks are per instance."""
        a, b = (r[0] for r in forked["others"])
        assert a["stream"] != b["stream"]
        for body in (a, b):
            assert body["stream"] == body["env_stream"]
            assert body["restored"] == [body["stream"]]  # register_after_restore ran once, here
            assert body["init_type"] == "on-demand"
        assert a["random"] != b["random"]
        assert a["before"] == b["before"] and len(a["before"]) == 1  # once, in the template
        assert forked["first"]["restored"] == []  # an ordinary instance restores nothing

    def test_instances_do_not_share_tmp_or_processes(self, forked: dict[str, Any]) -> None:
        a, b = (r[0] for r in forked["others"])
        assert a["tmp"] == ["mark"] and b["tmp"] == ["mark"]  # each sees only its own file
        for body in (a, b):
            assert body["pids"] == [1]  # its own PID namespace: no template, no sibling

    def test_forked_instances_are_locked_down(self, forked: dict[str, Any]) -> None:
        """No capabilities, the sandbox uid, the instance filter stacked on the template's:
        the namespace and mount calls the template may make are refused again."""
        for body, _report, _error in forked["others"]:
            assert body["cap_eff"] == "0000000000000000"
            assert body["cap_bnd"] == "0000000000000000"
            assert body["uid"] == "10001"
            assert body["seccomp_filters"] == 2
            assert body["unshare"] == 1  # EPERM
            assert body["mount"] == 1  # EPERM

    def test_exit_status_of_a_forked_instance(self, srv: Any, lam: Any,
                                              forked: dict[str, Any]) -> None:
        """The template reaps its instances and reports how they ended."""
        name = forked["name"]
        results = concurrently(lam, name, [{"sleep": 1.0}, {"sleep": 0.2, "exit": 3}])
        crashed = [r for r in results if r[2] is not None]
        assert len(crashed) == 1
        body, _report, _error = crashed[0]
        assert body["errorType"] == "Runtime.ExitError"
        assert body["errorMessage"].endswith("Runtime exited with error: exit status 3")

    def test_memory_limit_counts_pages_shared_with_the_template(self, srv: Any,
                                                                 lam: Any) -> None:
        """A forked instance of a 256 MB function cannot allocate 320 MB, and the version
        keeps working afterwards."""
        before = templates_ready(srv)
        name = unique("tpl-oom")
        create(lam, name, {"app.py": APP}, MemorySize=256, Timeout=30)
        invoke(lam, name, {})
        wait_for_templates(srv, before + 1)
        results = concurrently(lam, name, [{"sleep": 2.0}, {"allocate_mb": 320}])
        body, _report, error = results[1]
        assert error == "Unhandled"
        assert body["errorType"] in ("Runtime.OutOfMemory", "Runtime.ExitError")
        ok = invoke(lam, name, {})
        assert ok[2] is None

    def test_tmp_of_a_forked_instance_is_capped_on_disk(self, srv: Any, lam: Any) -> None:
        """/tmp is the same ext4 image as for any instance: writing past EphemeralStorage
        fails with ENOSPC (not an OOM kill), and it does not count against memory."""
        before = templates_ready(srv)
        name = unique("tpl-tmp")
        create(lam, name, {"app.py": APP}, MemorySize=128, Timeout=60)
        first, _report, _ = invoke(lam, name, {})
        wait_for_templates(srv, before + 1)
        results = concurrently(lam, name, [{"sleep": 2.0}, {"fill_tmp_mb": 600}])
        body, _report, error = results[1]
        assert error is None, body
        assert body["init"] != first["init"]  # forked from the template
        assert body["errno"] == 28  # ENOSPC
        assert 400 <= body["written_mb"] < 600  # far past the 128 MB memory limit

    def test_network_none_instance_gets_its_own_network(self, srv: Any, lam: Any) -> None:
        """`corral:network=none`: a forked instance has a loopback of its own and cannot
        reach the host's."""
        before = templates_ready(srv)
        name = unique("tpl-net")
        create(lam, name, {"app.py": APP}, Tags={"corral:network": "none"})
        first, _report, _ = invoke(lam, name, {})
        wait_for_templates(srv, before + 1)
        results = concurrently(lam, name, [{"sleep": 1.0}, {"net_port": srv.port}])
        body, _report, error = results[1]
        assert error is None
        assert body["init"] != first["init"]  # forked from the template
        assert body["host"] != "reachable" and body["loopback"] == "ok"

    def test_opt_out_tag(self, srv: Any, lam: Any) -> None:
        """`corral:template=off`: every instance runs the init code itself."""
        name = unique("tpl-off")
        create(lam, name, {"app.py": APP}, Tags={"corral:template": "off"})
        first, _report, _ = invoke(lam, name, {})
        time.sleep(1.0)  # a template would have been built by now
        results = concurrently(lam, name, [{"sleep": 1.0}, {"sleep": 0.2}, {"sleep": 0.2}])
        inits = {r[0]["init"] for r in results} | {first["init"]}
        assert len(inits) == 3  # the held first instance, and two fresh inits
        assert all(r[0]["restored"] == [] for r in results)

    def test_code_update_retires_the_template(self, srv: Any, lam: Any) -> None:
        """New code is never served from the old version's template, which goes away."""
        before = templates_ready(srv)
        name = unique("tpl-upd")
        create(lam, name, {"app.py": APP})
        invoke(lam, name, {})
        wait_for_templates(srv, before + 1)
        old = template_processes(name)
        assert len(old) == 1
        lam.update_function_code(FunctionName=name, ZipFile=make_zip(
            {"app.py": "def handler(e, c):\n    return {'init': 'v2'}\n"}))
        lam.get_waiter("function_updated_v2").wait(FunctionName=name)
        results = concurrently(lam, name, [{"sleep": 0.5}, {}, {}])
        assert all(r[0] == {"init": "v2"} for r in results)
        deadline = time.monotonic() + 15
        while template_processes(name):  # v2's init is cheap: no template of its own
            assert time.monotonic() < deadline, template_processes(name)
            time.sleep(0.1)


def template_processes(name: str) -> list[int]:
    """Host pids of the function's templates (their environment marks them)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if (f"AWS_LAMBDA_FUNCTION_NAME={name}".encode() in env
                and b"CORRAL_TEMPLATE=1" in env):
            found.append(int(entry))
    return found


def test_cheap_init_gets_a_template_only_when_asked(srv: Any, lam: Any) -> None:
    """Templates are automatic for versions whose init takes >= 100 ms; a cheap init
    keeps one init per instance unless the function is tagged `corral:template=on`."""
    cheap = "import uuid\nID = uuid.uuid4().hex\ndef handler(e, c):\n    return ID\n"
    before = templates_ready(srv)
    plain = unique("tpl-cheap")
    create(lam, plain, {"app.py": cheap})
    lam.invoke(FunctionName=plain, Payload=b"{}")
    time.sleep(1.0)
    assert templates_ready(srv) == before
    asked = unique("tpl-asked")
    create(lam, asked, {"app.py": cheap}, Tags={"corral:template": "on"})
    lam.invoke(FunctionName=asked, Payload=b"{}")
    wait_for_templates(srv, before + 1)


def test_templates_can_be_turned_off(make_server: Any) -> None:
    """CORRAL_TEMPLATES=off: the operator's switch for every function."""
    server = make_server(extra_env={"CORRAL_TEMPLATES": "off"})
    lam = server.client("lambda")
    name = unique("tpl-global-off")
    create(lam, name, {"app.py": APP})
    first, _report, _ = invoke(lam, name, {})
    time.sleep(1.0)
    assert templates_ready(server) == 0
    results = concurrently(lam, name, [{"sleep": 1.0}, {"sleep": 0.2}])
    assert len({r[0]["init"] for r in results} | {first["init"]}) == 2
