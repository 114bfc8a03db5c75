"""Pure helpers behind `corral deploy`: names, --env, runtime/handler inference, zipping."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from corral.cli.client import CliError
from corral.cli.commands.deploy import (
    collect_files,
    handler_file_present,
    infer_handler,
    infer_runtime,
    load_package,
    parse_env,
    sanitize_name,
    zip_directory,
)


def _reader(files: dict[str, str]):
    return lambda name: files[name].encode()


class TestNames:
    def test_sanitize_keeps_valid_characters(self):
        """Letters, digits, - and _ survive; anything else becomes a single dash."""
        assert sanitize_name("my_func-2") == "my_func-2"
        assert sanitize_name("hello world.v1") == "hello-world-v1"

    def test_sanitize_trims_to_64(self):
        """Names are cut to Lambda's 64 characters."""
        assert len(sanitize_name("a" * 100)) == 64

    def test_sanitize_rejects_empty(self):
        """A stem with no usable character asks for --name."""
        with pytest.raises(CliError, match="--name"):
            sanitize_name("...")


class TestEnv:
    def test_pairs(self):
        """KEY=VALUE pairs become a dict; values may be empty or contain '='."""
        assert parse_env(["A=1", "B=", "C=x=y"]) == {"A": "1", "B": "", "C": "x=y"}

    @pytest.mark.parametrize("bad", ["NOEQUALS", "=x", "1A=2", "A-B=1"])
    def test_rejects_malformed(self, bad):
        """A pair without '=' or with an invalid key is a CliError."""
        with pytest.raises(CliError):
            parse_env([bad])


class TestInference:
    def test_python(self):
        """A .py file means python3.11."""
        assert infer_runtime(["app.py", "lib/x.txt"])[0] == "python3.11"

    def test_node(self):
        """.js and .mjs files mean nodejs20.x."""
        assert infer_runtime(["index.mjs"])[0] == "nodejs20.x"
        assert infer_runtime(["index.js", "node_modules/a/b.js"])[0] == "nodejs20.x"

    def test_bootstrap_wins(self):
        """A root bootstrap means provided.al2023 even with vendored Python files."""
        assert infer_runtime(["bootstrap", "awslambdaric/__init__.py"])[0] == "provided.al2023"

    def test_root_files_decide_first(self):
        """A root app.py outweighs JavaScript deeper in the tree."""
        assert infer_runtime(["app.py", "static/site.js"])[0] == "python3.11"

    def test_nothing_to_infer(self):
        """A package without code asks for --runtime."""
        with pytest.raises(CliError, match="--runtime"):
            infer_runtime(["README.md"])

    def test_python_handler_default_names(self):
        """app.py with `def handler` gives app.handler."""
        files = {"app.py": "def handler(event, context):\n    return 1\n", "util.py": ""}
        assert infer_handler("python3.11", list(files), _reader(files))[0] == "app.handler"

    def test_python_lambda_handler(self):
        """The console's lambda_function.lambda_handler is recognised."""
        files = {"lambda_function.py": "def lambda_handler(event, context):\n    pass\n"}
        handler, _ = infer_handler("python3.12", list(files), _reader(files))
        assert handler == "lambda_function.lambda_handler"

    def test_python_single_module_any_event_function(self):
        """A lone module's function taking `event` is the handler."""
        files = {"work.py": "def helper(x):\n    pass\n\ndef run(event, ctx):\n    pass\n"}
        assert infer_handler("python3.11", list(files), _reader(files))[0] == "work.run"

    def test_python_no_candidate(self):
        """Several unknown modules at the root ask for --handler."""
        files = {"a.py": "", "b.py": ""}
        with pytest.raises(CliError, match="--handler"):
            infer_handler("python3.11", list(files), _reader(files))

    def test_node_handlers(self):
        """index.js exports.handler and ESM `export const handler` give index.handler."""
        files = {"index.js": "exports.handler = async () => 1;\n"}
        assert infer_handler("nodejs20.x", list(files), _reader(files))[0] == "index.handler"
        files = {"index.mjs": "export const handler = async () => 1;\n"}
        assert infer_handler("nodejs20.x", list(files), _reader(files))[0] == "index.handler"
        files = {"app.js": "exports.main = (e, c, cb) => cb(null, 1);\n"}
        assert infer_handler("nodejs20.x", list(files), _reader(files))[0] == "app.main"

    def test_provided_handler(self):
        """Custom runtimes get a placeholder handler."""
        assert infer_handler("provided.al2023", ["bootstrap"], _reader({}))[0] == "bootstrap"

    def test_handler_file_present(self):
        """The module a handler names is looked up in the package."""
        assert handler_file_present("python3.11", "app.handler", ["app.py"])
        assert handler_file_present("python3.11", "pkg.mod.fn", ["pkg/mod.py"])
        assert not handler_file_present("python3.11", "main.handler", ["app.py"])
        assert handler_file_present("nodejs20.x", "index.handler", ["index.mjs"])
        assert handler_file_present("provided", "whatever", [])


class TestZipping:
    def _tree(self, root: Path) -> None:
        (root / "pkg").mkdir(parents=True)
        (root / "app.py").write_text("def handler(e, c):\n    return 1\n")
        (root / "pkg" / "mod.py").write_text("X = 1\n")
        (root / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(root / "run.sh", 0o700)
        for skipped in ("__pycache__", ".git", ".venv"):
            (root / skipped).mkdir()
            (root / skipped / "junk").write_text("x")
        (root / "pkg" / "__pycache__").mkdir()
        (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")

    def test_skips_and_modes(self, tmp_path):
        """Cache, VCS and venv dirs are skipped; the executable bit is kept (0755/0644)."""
        self._tree(tmp_path)
        data = zip_directory(tmp_path)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = sorted(zf.namelist())
            modes = {i.filename: (i.external_attr >> 16) for i in zf.infolist()}
        assert names == ["app.py", "pkg/mod.py", "run.sh"]
        assert stat.S_IMODE(modes["run.sh"]) == 0o755
        assert stat.S_IMODE(modes["app.py"]) == 0o644

    def test_deterministic(self, tmp_path):
        """The same tree zips to the same bytes even after its mtimes change."""
        self._tree(tmp_path)
        first = zip_directory(tmp_path)
        os.utime(tmp_path / "app.py", (1, 1))
        assert zip_directory(tmp_path) == first

    def test_bootstrap_made_executable(self, tmp_path):
        """A root bootstrap is stored executable even if the file is not."""
        (tmp_path / "bootstrap").write_text("#!/bin/sh\n")
        os.chmod(tmp_path / "bootstrap", 0o644)
        with zipfile.ZipFile(io.BytesIO(zip_directory(tmp_path))) as zf:
            assert (zf.getinfo("bootstrap").external_attr >> 16) & 0o111

    def test_progress_counts_bytes(self, tmp_path):
        """The progress callback sees every byte of every file."""
        (tmp_path / "a.py").write_bytes(b"x" * 1000)
        (tmp_path / "b.py").write_bytes(b"y" * 500)
        seen = []
        zip_directory(tmp_path, seen.append)
        assert sum(seen) == 1500

    def test_collect_files_relative_names(self, tmp_path):
        """Names use '/' and are relative to the directory."""
        self._tree(tmp_path)
        assert [n for n, _ in collect_files(tmp_path)] == ["app.py", "pkg/mod.py", "run.sh"]

    def test_load_zip_and_errors(self, tmp_path):
        """A .zip is read as is; a non-zip file or a missing path is a CliError."""
        zpath = tmp_path / "f.zip"
        with zipfile.ZipFile(zpath, "w") as zf:
            zf.writestr("index.js", "exports.handler = () => 1;")
        package = load_package(zpath)
        assert package.names == ["index.js"]
        assert package.build(lambda n: None) == zpath.read_bytes()
        (tmp_path / "notes.txt").write_text("hi")
        with pytest.raises(CliError, match="not a zip"):
            load_package(tmp_path / "notes.txt")
        with pytest.raises(CliError, match="no such file"):
            load_package(tmp_path / "missing")
