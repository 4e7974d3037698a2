import hashlib

import pytest
from click.testing import CliRunner

from gmia import __version__
from gmia.cli import cli


def _run(*args):
    return CliRunner().invoke(cli, list(args))


def test_help_lists_commands_and_version():
    out = _run("--help")
    assert out.exit_code == 0
    for command in ("phantom", "import-checkpoint", "anonymize"):
        assert command in out.output
    assert __version__ in _run("--version").output


def test_errors_are_one_clear_line():
    out = _run("phantom", "--preset", "nope", "--out", "x")
    assert out.exit_code == 1
    assert "unknown preset 'nope'" in out.output and "Traceback" not in out.output
    assert out.output.count("\n") == 1


def test_debug_shows_the_exception():
    out = _run("--debug", "phantom", "--preset", "nope", "--out", "x")
    assert out.exit_code == 1 and out.exception is not None


@pytest.mark.parametrize("domain", ["cxr", "face"])
def test_phantom_command_writes_identical_bytes(tmp_path, domain):
    def digest(folder):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()

    for name in ("a", "b"):
        out = _run("phantom", "--domain", domain, "--patients", "5", "--studies", "2", "--size", "32",
                   "--seed", "1", "--out", str(tmp_path / name))
        assert out.exit_code == 0, out.output
        assert "wrote 10" in out.output
    assert len(list((tmp_path / "a" / "images").glob("*.png"))) == 10
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_import_checkpoint_refuses_a_malicious_pickle(tmp_path):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": Payload()}))
    out = _run("import-checkpoint", str(evil), str(tmp_path / "out"))
    assert out.exit_code == 1
    assert "refused as unsafe" in out.output and "system" in out.output and "Traceback" not in out.output
    assert not marker.exists() and not (tmp_path / "out").exists()


def _help_in_a_fresh_process(*args: str) -> str:
    import subprocess
    import sys

    code = (f"import sys\nfrom gmia.cli import cli\ntry:\n    cli.main({[*args, '--help']!r}, prog_name='gmia')\n"
            "except SystemExit:\n    pass\nprint('torch loaded:', 'torch' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout


def test_help_does_not_import_torch():
    """`gmia --help` and `gmia anonymize --help` answer at once: no torch, no networks."""
    out = _help_in_a_fresh_process()
    assert "torch loaded: False" in out
    for name in ("anonymize", "evaluate", "fit", "import-checkpoint", "phantom", "report", "train"):
        assert f"\n  {name} " in out, name
    out = _help_in_a_fresh_process("anonymize")
    assert "torch loaded: False" in out and "--privacy" in out and "--output-format" in out


def test_the_lazy_command_table_matches_the_commands():
    import click

    from gmia.cli import LAZY_COMMANDS, cli

    ctx = click.Context(cli)
    for name, (_, _, line) in LAZY_COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert " ".join(command.help.split("\n\n")[0].split()) == line, name   # the listed line is the real one
    assert "aegan" in cli.get_command(ctx, "train").commands
