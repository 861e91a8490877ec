"""Fixed costs of a run: what the CLI and the eval path import, and how the supervised child
exits. Checked by what is loaded and what reaches the outside, never by a clock."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

# Libraries no command needs before it runs: `--help`, `lint`, `show` and the supervisor
# (which stays alive for the whole of an engine command) must not pay for them.
NOT_AT_CLI_START = {
    "numpy",
    "llama_cpp",
    "jsonschema",
    "jinja2",
    "matplotlib",
    "deepdiff",
    "pydantic",
    "huggingface_hub",
    "git",
    "psutil",
    "gguf",
    "yaml",
}
# Libraries an eval of models already in the store never needs (plots, diffs of mismatches
# only, the network code of pulls).
NOT_ON_EVAL_PATH = {
    "matplotlib",
    "deepdiff",
    "pydantic",
    "huggingface_hub",
    "git",
    "urllib.request",
    "http.client",
    "ssl",
    "filelock",  # only the store's writers (pulls, quantization, gc) take its locks
}


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_cli_start_imports_no_heavy_library() -> None:
    loaded = _modules_after("import lifecycle.cli")
    assert "lifecycle.cli" in loaded  # the probe saw the import it was asked to make
    assert NOT_AT_CLI_START & loaded == set()


def test_cli_start_imports_no_command_module() -> None:
    """Each command's module is imported when that command runs (or --help lists it): the
    start of `eval` pays for eval's own module, not for pull's, report's or bench's."""
    loaded = _modules_after("import lifecycle.cli")
    assert {m for m in loaded if m.startswith("lifecycle.cli.")} == {"lifecycle.cli._errors"}
    loaded = _modules_after(
        "import click\nfrom lifecycle.cli import cli\ncli.get_command(click.Context(cli), 'eval')"
    )
    commands = {
        m for m in loaded if m.startswith("lifecycle.cli.") and not m.startswith("lifecycle.cli._")
    }
    assert commands == {"lifecycle.cli.eval"}


def test_every_command_resolves_by_its_name() -> None:
    import click

    from lifecycle.cli import COMMANDS, cli

    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None


def test_eval_path_imports_no_plotting_diff_or_network_library() -> None:
    loaded = _modules_after(
        "import lifecycle.cli, lifecycle.cli.eval, lifecycle.runner, lifecycle.engines.doctor"
    )
    assert {"lifecycle.runner", "lifecycle.sources", "jsonschema"} <= loaded
    assert NOT_ON_EVAL_PATH & loaded == set()


# Imported on first real need, not by the eval path's modules: gguf-py when a GGUF header is
# parsed (a cached header, lifecycle.gguf, needs none), llguidance on the first schema,
# psutil when a run measures the machine.
NOT_UNTIL_NEEDED = {"gguf", "llguidance", "psutil"}


def test_eval_path_imports_gguf_py_and_llguidance_only_when_needed() -> None:
    loaded = _modules_after(
        "import lifecycle.cli, lifecycle.cli.eval, lifecycle.runner, lifecycle.engines.doctor\n"
        "import lifecycle.engines.llama_cpp, lifecycle.estimate, lifecycle.quantize\n"
        "from lifecycle.engines.structured import schema_decoder\n"
        "from lifecycle.estimate import kv_type_bytes\n"
        "assert kv_type_bytes('q8_0') == 34 / 32\n"
        "print(schema_decoder())"
    )
    assert {"llama_cpp", "lifecycle.engines.structured", "lifecycle.gguf"} <= loaded
    assert NOT_UNTIL_NEEDED & loaded == set()


def test_foreign_load_finds_the_descendants_psutil_finds() -> None:
    """The foreign-load measure reads /proc/<pid>/task/<tid>/children instead of psutil's
    scan of every process: the same processes, grandchildren included."""
    import psutil

    from lifecycle.results import ForeignLoad, _descendants

    me = psutil.Process()
    tree = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(me.children(recursive=True)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        expected = sorted(p.pid for p in me.children(recursive=True))
        assert len(expected) >= 3
        assert sorted(p.pid for p in _descendants(me)) == expected
        assert ForeignLoad().start().share() >= 0.0  # (over no wall time: any size)
    finally:
        for child in psutil.Process(tree.pid).children(recursive=True):
            child.kill()
        tree.kill()
        tree.wait()


def test_a_pull_still_finds_its_source() -> None:
    """The sources are imported on first use: a pull of each kind reaches its module."""
    loaded = _modules_after(
        "from lifecycle import sources\n"
        "from lifecycle.tags import Tag\n"
        "for scheme in ('file', 'pypi', 'hf', 'ollama', 'oci'):\n"
        "    sources._module(Tag(scheme, 'x'))"
    )
    wanted = {"file", "pypi", "hf", "oci"}
    assert {f"lifecycle.sources.{name}" for name in wanted} <= loaded


def test_supervised_child_exit_keeps_every_promise(tmp_path: Path) -> None:
    """exit_now skips the interpreter's teardown, not what a normal exit owes the outside:
    buffered stdout/stderr, atexit handlers, non-daemon threads, the exit code."""
    marker = tmp_path / "atexit.txt"
    script = textwrap.dedent(
        f"""
        import atexit, sys, threading, time
        from lifecycle import crashguard

        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))

        def late():
            time.sleep(0.2)
            sys.stdout.write("thread done\\n")

        threading.Thread(target=late).start()
        sys.stdout.write('{{"document": "without a newline"}}')
        sys.stderr.write("last words")
        crashguard.exit_now(3)
        print("never")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3
    assert done.stdout == '{"document": "without a newline"}thread done\n'
    assert done.stderr == "last words"
    assert marker.read_text() == "ran"
