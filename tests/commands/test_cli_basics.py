import subprocess
import sys

from sae_rdp_plugin.cli import build_parser, main


def test_parser_lists_every_group():
    help_text = build_parser().format_help()
    for group in ["demo", "theory"]:
        assert group in help_text


def test_unknown_command_fails():
    proc = subprocess.run([sys.executable, "-m", "sae_rdp_plugin", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr


def test_demo_rejects_file_as_out(tmp_path, capsys):
    f = tmp_path / "x"
    f.write_text("")
    assert main(["demo", "--out", str(f), "--only", "theory"]) == 2
    assert "not a directory" in capsys.readouterr().err
