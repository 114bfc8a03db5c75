"""`corral deploy PATH`: create a function from a directory or a zip, or update it.

A directory is zipped in memory: files in sorted order with a fixed timestamp and modes
normalised to 0644/0755 (the executable bit is kept), skipping ``__pycache__``, ``.git`` and
``.venv``. The same tree therefore always gives the same zip, and a redeploy whose CodeSha256
matches the function's skips the code upload.

A new function's runtime and handler are inferred from the package unless given: a root
``bootstrap`` means ``provided.al2023``, Python files ``python3.11``, JavaScript ``nodejs20.x``;
the handler is ``<module>.<function>`` from the usual entry files (``app.py``,
``lambda_function.py``, ``index.js``, ...). An existing function keeps its settings except
those given on the command line (``--env`` replaces the whole environment).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from botocore.exceptions import ClientError

from corral.cli.client import CliError, connection_options, get_connection
from corral.cli.output import (
    console,
    echo_json,
    format_bytes,
    key_values,
    note,
    stdout_is_tty,
    warn,
)

__all__ = [
    "DEFAULT_ROLE",
    "Package",
    "deploy",
    "infer_handler",
    "infer_runtime",
    "load_package",
    "parse_env",
    "sanitize_name",
    "zip_directory",
]

DEFAULT_ROLE = "arn:aws:iam::000000000000:role/corral-cli"
SKIP_DIRS = frozenset({"__pycache__", ".git", ".venv"})
SKIP_FILES = frozenset({".DS_Store"})
PROGRESS_THRESHOLD = 1024 * 1024  # show progress bars for packages above 1 MB
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
CHUNK = 256 * 1024
WAITER_CONFIG = {"Delay": 1, "MaxAttempts": 300}

PYTHON_RUNTIME = "python3.11"
NODE_RUNTIME = "nodejs20.x"
PROVIDED_RUNTIME = "provided.al2023"
PY_MODULES = ("app", "lambda_function", "handler", "main", "index", "function")
NODE_MODULES = ("index", "app", "handler", "main", "function")
NODE_EXTENSIONS = (".js", ".mjs", ".cjs")

_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_ENV_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


# -- pure helpers -----------------------------------------------------------------------------


def sanitize_name(stem: str) -> str:
    """A Lambda function name from a file or directory name: [A-Za-z0-9_-], at most 64."""
    name = _NAME_BAD.sub("-", stem).strip("-")[:64].strip("-")
    if not name:
        raise CliError(f"cannot make a function name from {stem!r}: pass --name")
    return name


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` strings as a dict (the value may be empty or contain `=`)."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise CliError(f"--env {pair!r}: expected KEY=VALUE with KEY a letter followed by "
                           "letters, digits or _")
        env[key] = value
    return env


def infer_runtime(names: Sequence[str]) -> tuple[str, str]:
    """(runtime, why) from a package's file names; CliError if nothing fits.

    Files at the root decide first (a vendored library deep in the tree must not), then any
    file: `bootstrap` → provided.al2023, `*.py` → python3.11, `*.js/*.mjs/*.cjs` → nodejs20.x.
    """
    for scope in ("root", "any"):
        pool = [n for n in names if "/" not in n] if scope == "root" else list(names)
        if "bootstrap" in pool:
            return PROVIDED_RUNTIME, "found a bootstrap file"
        py = [n for n in pool if n.endswith(".py")]
        if py:
            return PYTHON_RUNTIME, f"found {py[0]}"
        js = [n for n in pool if n.endswith(NODE_EXTENSIONS) and "node_modules/" not in n]
        if js:
            return NODE_RUNTIME, f"found {js[0]}"
    raise CliError("cannot infer the runtime (no bootstrap, *.py or *.js file): pass --runtime")


_PY_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(([^)]*)", re.MULTILINE)
_NODE_EXPORTS = (
    re.compile(r"\b(?:module\.)?exports\.([A-Za-z_$][\w$]*)\s*="),
    re.compile(r"\bexport\s+(?:async\s+)?function\s*\*?\s*([A-Za-z_$][\w$]*)"),
    re.compile(r"\bexport\s+(?:const|let|var)\s+([A-Za-z_$][\w$]*)"),
)


def _python_function(source: str) -> str:
    defs = [(m.group(1), m.group(2)) for m in _PY_DEF.finditer(source)]
    names = [name for name, _ in defs]
    for preferred in ("handler", "lambda_handler"):
        if preferred in names:
            return preferred
    for name, params in defs:
        if re.match(r"\s*event\b", params):
            return name
    return "handler"


def _node_function(source: str) -> str:
    found: list[str] = []
    for pattern in _NODE_EXPORTS:
        found += pattern.findall(source)
    if "handler" in found or not found:
        return "handler"
    return found[0]


def infer_handler(runtime: str, names: Sequence[str],
                  read: Callable[[str], bytes]) -> tuple[str, str]:
    """(handler, why) for `runtime` from the package's root files; CliError if none fits."""
    root = [n for n in names if "/" not in n]
    if runtime.startswith("provided"):
        return "bootstrap", "custom runtime: the handler is passed to bootstrap as _HANDLER"
    if runtime.startswith("python"):
        modules = [n[:-3] for n in root if n.endswith(".py")]
        chosen = next((m for m in PY_MODULES if m in modules), None)
        if chosen is None and len(modules) == 1:
            chosen = modules[0]
        if chosen is None:
            raise CliError("cannot infer the handler (no app.py, lambda_function.py, "
                           "handler.py, ... at the package root): pass --handler")
        text = read(f"{chosen}.py").decode("utf-8", "replace")
        return f"{chosen}.{_python_function(text)}", f"from {chosen}.py"
    if runtime.startswith("nodejs"):
        files = {n.rsplit(".", 1)[0]: n for n in root if n.endswith(NODE_EXTENSIONS)}
        chosen = next((m for m in NODE_MODULES if m in files), None)
        if chosen is None and len(files) == 1:
            chosen = next(iter(files))
        if chosen is None:
            raise CliError("cannot infer the handler (no index.js, app.js, ... at the package "
                           "root): pass --handler")
        text = read(files[chosen]).decode("utf-8", "replace")
        return f"{chosen}.{_node_function(text)}", f"from {files[chosen]}"
    raise CliError(f"cannot infer a handler for runtime {runtime}: pass --handler")


def handler_file_present(runtime: str, handler: str, names: Sequence[str]) -> bool:
    """Whether the module a Python/Node handler names is in the package (True if unknowable)."""
    module = handler.rpartition(".")[0]
    if not module:
        return True
    if runtime.startswith("python"):
        base = module.replace(".", "/")
        return f"{base}.py" in names or f"{base}/__init__.py" in names
    if runtime.startswith("nodejs"):
        return any(f"{module}{ext}" in names for ext in NODE_EXTENSIONS)
    return True


# -- packages ---------------------------------------------------------------------------------


@dataclass
class Package:
    """What `deploy` uploads: the file names inside it and a way to read them and zip them."""

    source: Path
    names: list[str]
    size: int  # bytes to process: the files' total size, or the zip's size
    read: Callable[[str], bytes]
    build: Callable[[Callable[[int], None]], bytes]  # zip bytes; reports bytes processed


def collect_files(directory: Path) -> list[tuple[str, Path]]:
    """(name in the zip, host path) of every file under `directory`, sorted, skipping
    __pycache__, .git and .venv; symlinks are followed (loops are not)."""
    out: list[tuple[str, Path]] = []
    seen_dirs: set[str] = set()
    for current, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(current)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        rel_dir = os.path.relpath(current, directory)
        for filename in sorted(files):
            if filename in SKIP_FILES:
                continue
            path = Path(current) / filename
            if not path.is_file():
                continue  # dangling symlink, socket, ...
            rel = filename if rel_dir == "." else f"{rel_dir}/{filename}"
            out.append((rel.replace(os.sep, "/"), path))
    out.sort()
    return out


def zip_directory(directory: Path, progress: Callable[[int], None] | None = None,
                  files: list[tuple[str, Path]] | None = None) -> bytes:
    """The directory as deterministic zip bytes (see the module docstring)."""
    files = collect_files(directory) if files is None else files
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in files:
            mode = path.stat().st_mode
            executable = bool(mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
            if name == "bootstrap":
                executable = True
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so unzip honours the mode bits
            with path.open("rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
    return buf.getvalue()


def load_package(source: Path) -> Package:
    """A Package for a directory or a .zip file; CliError for anything else."""
    if source.is_dir():
        files = collect_files(source)
        if not files:
            raise CliError(f"{source} has no files to deploy")
        by_name = dict(files)

        def read_file(name: str) -> bytes:
            return by_name[name].read_bytes()

        return Package(source, [n for n, _ in files], sum(p.stat().st_size for _, p in files),
                       read_file, lambda progress: zip_directory(source, progress, files))
    if source.is_file():
        data = source.read_bytes()
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
        except zipfile.BadZipFile as exc:
            raise CliError(f"{source} is not a zip file ({exc}); deploy a directory or a .zip"
                           ) from exc

        def build(progress: Callable[[int], None]) -> bytes:
            progress(len(data))
            return data

        return Package(source, names, len(data), zf.read, build)
    if not source.exists():
        raise CliError(f"{source}: no such file or directory")
    raise CliError(f"{source} is neither a directory nor a zip file")


def _zip_bootstrap_executable(source: Path) -> bool | None:
    """For a .zip: whether its root `bootstrap` has an executable bit (None if absent)."""
    try:
        with zipfile.ZipFile(source) as zf:
            info = zf.getinfo("bootstrap")
    except (KeyError, zipfile.BadZipFile, OSError):
        return None
    return bool((info.external_attr >> 16) & 0o111)


# -- upload with progress ---------------------------------------------------------------------


class _ProgressBody(io.RawIOBase):
    """A request body that reports how much of it has been read (sent)."""

    def __init__(self, data: bytes, progress: Callable[[int], None]) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._pos = 0
        self._progress = progress
        self.len = len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        end = self.len if size is None or size < 0 else min(self.len, self._pos + size)
        chunk = bytes(self._data[self._pos:end])
        self._pos = end
        if chunk:
            self._progress(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.len}[whence]
        self._pos = max(0, min(self.len, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos


@contextmanager
def _upload_progress(lam: Any, progress: Callable[[int, int], None]) -> Iterator[None]:
    """While active, request bodies of `lam` are streamed with progress(sent, total) calls."""

    def before_send(request: Any, **_: Any) -> None:
        body = request.body
        if isinstance(body, bytes | bytearray) and len(body) > 0:
            total = len(body)
            sent = [0]

            def advance(n: int) -> None:
                sent[0] += n
                progress(sent[0], total)

            request.body = _ProgressBody(bytes(body), advance)

    events = lam.meta.events
    events.register("before-send.lambda", before_send, unique_id="corral-upload-progress")
    try:
        yield
    finally:
        events.unregister("before-send.lambda", unique_id="corral-upload-progress")


class _Progress:
    """Rich progress bars for zipping and uploading, or nothing when not wanted."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description:<10}"), BarColumn(),
                DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                console=console(), transient=True)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def task(self, name: str, total: int) -> Callable[[int], None]:
        """A callback advancing task `name` by n bytes."""
        if self._progress is None:
            return lambda n: None
        task_id = self._progress.add_task(name, total=total)
        self._tasks[name] = task_id
        return lambda n: self._progress.advance(task_id, n)

    def set(self, name: str, completed: int, total: int) -> None:
        if self._progress is None:
            return
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=total)
        self._progress.update(self._tasks[name], completed=completed, total=total)


# -- the command ------------------------------------------------------------------------------


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _get_config(lam: Any, name: str) -> dict[str, Any] | None:
    try:
        config: dict[str, Any] = lam.get_function_configuration(FunctionName=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return None
        raise
    return config


def _strip(resp: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resp.items() if k != "ResponseMetadata"}


def _summary(config: dict[str, Any], action: str) -> None:
    key_values([
        ("Function", config.get("FunctionName", "-")),
        ("Action", action),
        ("Runtime", config.get("Runtime", "-")),
        ("Handler", config.get("Handler", "-")),
        ("Memory", f"{config.get('MemorySize', '-')} MB"),
        ("Timeout", f"{config.get('Timeout', '-')} s"),
        ("Code size", format_bytes(config.get("CodeSize"))),
        ("SHA-256", config.get("CodeSha256", "-")),
        ("State", f"{config.get('State', '-')} (last update: "
                  f"{config.get('LastUpdateStatus', '-')})"),
    ])


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", "-n", default=None,
              help="Function name (default: the directory or zip name).")
@click.option("--runtime", "-r", default=None,
              help="Runtime, e.g. python3.12 (default: inferred for a new function).")
@click.option("--handler", "-H", "handler", default=None,
              help="Handler, e.g. app.handler (default: inferred for a new function).")
@click.option("--memory", "-m", type=int, default=None, help="Memory in MB (default 128).")
@click.option("--timeout", "-t", type=int, default=None, help="Timeout in seconds (default 3).")
@click.option("--env", "-e", "env_pairs", multiple=True, metavar="KEY=VALUE",
              help="Environment variable (repeatable; replaces the whole environment).")
@click.option("--description", "-d", default=None, help="Description.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the resulting FunctionConfiguration as JSON.")
@connection_options
def deploy(path: Path, name: str | None, runtime: str | None, handler: str | None,
           memory: int | None, timeout: int | None, env_pairs: tuple[str, ...],
           description: str | None, as_json: bool, endpoint_url: str | None,
           data_dir: str | None) -> None:
    """Create or update a function from PATH, a directory or a .zip file."""
    source = path.expanduser()
    package = load_package(source)
    stem = source.resolve().name if source.is_dir() else source.stem
    function_name = name or sanitize_name(stem)
    env = parse_env(env_pairs) if env_pairs else None

    lam = get_connection(endpoint_url, data_dir).lambda_client(read_timeout=300)
    existing = _get_config(lam, function_name)

    if existing is None:
        if runtime is None:
            runtime, why = infer_runtime(package.names)
            note(f"Runtime: {runtime} (inferred: {why}; override with --runtime)")
        if handler is None:
            handler, why = infer_handler(runtime, package.names, package.read)
            note(f"Handler: {handler} (inferred {why}; override with --handler)")
    else:
        effective_runtime = runtime or existing.get("Runtime", "")
        effective_handler = handler or existing.get("Handler", "")
        if not handler_file_present(effective_runtime, effective_handler, package.names):
            warn(f"handler {effective_handler} names a module that is not in {source}; "
                 "pass --handler to change it")
    effective = runtime or (existing or {}).get("Runtime", "")
    if effective.startswith("provided") and source.is_file() \
            and _zip_bootstrap_executable(source) is False:
        warn("bootstrap in the zip is not executable; the function will fail to start")

    show = stdout_is_tty() and not as_json and package.size > PROGRESS_THRESHOLD
    with _Progress(show) as bars:
        zipped = package.build(bars.task("Zipping" if source.is_dir() else "Reading",
                                         package.size))
        sha = _sha256_b64(zipped)
        with _upload_progress(lam, lambda sent, total: bars.set("Uploading", sent, total)) \
                if show else _nothing():
            config: dict[str, Any] | None = None
            action = "created"
            if existing is None:
                config = _create(lam, function_name, zipped, runtime, handler, memory, timeout,
                                 env, description)
                if config is None:  # someone else created it meanwhile: update it
                    existing = _get_config(lam, function_name) or {}
            if config is None:
                assert existing is not None
                config, action = _update(lam, function_name, existing, zipped, sha, runtime,
                                         handler, memory, timeout, env, description)
    if as_json:
        echo_json(config)
    else:
        _summary(config, action)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _create(lam: Any, name: str, zipped: bytes, runtime: str | None, handler: str | None,
            memory: int | None, timeout: int | None, env: dict[str, str] | None,
            description: str | None) -> dict[str, Any] | None:
    """Create the function and wait until it is Active; None if it already exists."""
    params: dict[str, Any] = {"FunctionName": name, "Runtime": runtime, "Handler": handler,
                              "Role": DEFAULT_ROLE, "Code": {"ZipFile": zipped}}
    if memory is not None:
        params["MemorySize"] = memory
    if timeout is not None:
        params["Timeout"] = timeout
    if env is not None:
        params["Environment"] = {"Variables": env}
    if description is not None:
        params["Description"] = description
    try:
        lam.create_function(**params)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceConflictException":
            return None
        raise
    lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig=WAITER_CONFIG)
    return _strip(lam.get_function_configuration(FunctionName=name))


def _update(lam: Any, name: str, existing: dict[str, Any], zipped: bytes, sha: str,
            runtime: str | None, handler: str | None, memory: int | None,
            timeout: int | None, env: dict[str, str] | None,
            description: str | None) -> tuple[dict[str, Any], str]:
    """Update code (unless unchanged), wait, then configuration (if asked), wait."""
    waiter = lam.get_waiter("function_updated_v2")
    if existing.get("LastUpdateStatus") == "InProgress":
        waiter.wait(FunctionName=name, WaiterConfig=WAITER_CONFIG)  # a previous update
    changed = []
    if existing.get("CodeSha256") != sha:
        lam.update_function_code(FunctionName=name, ZipFile=zipped)
        waiter.wait(FunctionName=name, WaiterConfig=WAITER_CONFIG)
        changed.append("code")
    params: dict[str, Any] = {}
    for key, value in (("Runtime", runtime), ("Handler", handler), ("MemorySize", memory),
                       ("Timeout", timeout), ("Description", description)):
        if value is not None and existing.get(key) != value:
            params[key] = value
    if env is not None and existing.get("Environment", {}).get("Variables", {}) != env:
        params["Environment"] = {"Variables": env}
    if params:
        lam.update_function_configuration(FunctionName=name, **params)
        waiter.wait(FunctionName=name, WaiterConfig=WAITER_CONFIG)
        changed.append("configuration")
    config = _strip(lam.get_function_configuration(FunctionName=name))
    if not changed:
        return config, "unchanged"
    return config, "updated " + " and ".join(changed)

