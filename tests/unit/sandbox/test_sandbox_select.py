"""Choosing the sandbox from settings: auto, linux and process modes, the insecure flag, and
the isolation report `corral doctor` prints."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.config import Settings
from corral.errors import ConfigError
from corral.sandbox import select
from corral.sandbox.api import IsolationReport
from corral.sandbox.process import ProcessSandboxFactory

_INSECURE = IsolationReport(implementation="linux (unavailable)", enforced=(),
                            not_enforced=("not root: no namespaces",), secure=False)


def test_probe_is_consistent() -> None:
    """probe() lists what is and is not enforced and is secure only with nothing essential
    missing."""
    report = select.probe()
    assert report.lines()[0].startswith("sandbox: linux")
    if report.secure:
        assert report.implementation == "linux"
        assert not any("memory" in item or "not root" in item for item in report.not_enforced)
    else:
        assert report.not_enforced


def test_process_mode_needs_the_insecure_flag(tmp_path: Path) -> None:
    """sandbox=process refuses without allow_insecure and gives plain processes with it."""
    with pytest.raises(ConfigError, match="does not isolate"):
        select.make_factory(Settings(data_dir=tmp_path, sandbox="process"))
    made = select.make_factory(Settings(data_dir=tmp_path, sandbox="process",
                                        allow_insecure=True))
    assert isinstance(made, ProcessSandboxFactory)


def test_unknown_mode(tmp_path: Path) -> None:
    """An unknown sandbox name is a configuration error."""
    with pytest.raises(ConfigError, match="unknown sandbox"):
        select.make_factory(Settings(data_dir=tmp_path, sandbox="docker"))


def test_auto_refuses_on_an_insecure_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the host cannot isolate, auto and linux refuse with the report's lines, and auto
    with allow_insecure falls back to plain processes."""
    monkeypatch.setattr(select, "probe", lambda: _INSECURE)
    for mode in ("auto", "linux"):
        with pytest.raises(ConfigError) as info:
            select.make_factory(Settings(data_dir=tmp_path, sandbox=mode))
        assert "not root: no namespaces" in str(info.value)
        assert "--insecure" in str(info.value)
    with pytest.raises(ConfigError):
        select.make_factory(Settings(data_dir=tmp_path, sandbox="linux", allow_insecure=True))
    made = select.make_factory(Settings(data_dir=tmp_path, sandbox="auto", allow_insecure=True))
    assert isinstance(made, ProcessSandboxFactory)


def test_auto_picks_linux_when_possible(tmp_path: Path) -> None:
    """On a host that can isolate (root here), auto gives the Linux sandbox."""
    if not select.probe().secure:
        pytest.skip("this host cannot isolate")
    from corral.sandbox.linux import LinuxSandboxFactory

    made = select.make_factory(Settings(data_dir=tmp_path))
    try:
        assert isinstance(made, LinuxSandboxFactory)
        assert made.report().secure
    finally:
        asyncio.run(made.close())
