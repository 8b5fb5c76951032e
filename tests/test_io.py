"""sae_rdp_plugin.io.replace_dir: the one folder swap used by training saves, checkpoints and exports."""

import pytest

from sae_rdp_plugin.io import replace_dir


def _folder(path, text):
    path.mkdir()
    (path / "f.txt").write_text(text)
    return path


def test_replace_dir_new_and_existing(tmp_path):
    dest = tmp_path / "out"
    replace_dir(_folder(tmp_path / "a", "first"), dest)
    assert (dest / "f.txt").read_text() == "first"
    replace_dir(_folder(tmp_path / "b", "second"), dest)
    assert (dest / "f.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside


def test_replace_dir_failure_puts_the_old_folder_back(tmp_path):
    dest = _folder(tmp_path / "out", "old")
    with pytest.raises(OSError):
        replace_dir(tmp_path / "missing", dest)
    assert (dest / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
