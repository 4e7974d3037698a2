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
