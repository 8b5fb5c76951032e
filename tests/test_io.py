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


def test_stale_temps_are_recognised_by_our_naming_only(tmp_path):
    """A killed atomic write leaves its temporary sibling; remove_stale_temps removes exactly those."""
    import os
    import tempfile

    from sae_rdp_plugin.io import atomic_save, atomic_write_json, is_temp_name, remove_stale_temps

    # what the two writers create before they rename (the writer stops here, as under SIGKILL)
    seen = []

    def killed(p):
        seen.append(p.name)
        raise RuntimeError

    with pytest.raises(RuntimeError):
        atomic_save(tmp_path / "g.safetensors", killed)
    fd, raw = tempfile.mkstemp(dir=tmp_path, prefix=".state.json.", suffix=".tmp")  # atomic_write_bytes' name
    os.close(fd)
    left = [seen[0], os.path.basename(raw)]
    for name in left:
        (tmp_path / name).write_bytes(b"")
    atomic_write_json(tmp_path / "state.json", {"a": 1})
    # a user's files, and the naming of earlier versions (not recognised: it is not unique to us)
    mine = [".hidden", "notes.tmp", ".x.tmp", "g.safetensors.tmp", ".g.abcdefgh.safetensors", "state.json"]
    for name in mine[:-1]:
        (tmp_path / name).write_text("user")
    assert [n for n in left if is_temp_name(n)] == left and not any(is_temp_name(n) for n in mine)
    assert sorted(p.name for p in remove_stale_temps(tmp_path)) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mine)


def test_staged_folder_publishes_all_or_nothing(tmp_path):
    from sae_rdp_plugin.io import staged_folder

    dest = tmp_path / "a" / "b" / "out"
    with pytest.raises(ZeroDivisionError):
        with staged_folder(dest) as tmp:
            (tmp / "one.json").write_text("1")
            1 / 0
    assert list(tmp_path.iterdir()) == []  # no staging folder, and the parents it made are gone
    with staged_folder(dest) as tmp:
        (tmp / "one.json").write_text("1")
        (tmp / "two.json").write_text("2")
    assert sorted(p.name for p in dest.iterdir()) == ["one.json", "two.json"]
    assert [p.name for p in dest.parent.iterdir()] == ["out"]


def test_check_out_folder(tmp_path):
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.io import check_out_folder

    def ours(p):
        return (p / "marker").exists()

    assert check_out_folder(tmp_path / "new" / "deeper", ours) == tmp_path / "new" / "deeper"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(SaeRdpError, match="did not write"):
        check_out_folder(tmp_path / "mine", ours)
    (tmp_path / "mine" / "marker").write_text("")
    check_out_folder(tmp_path / "mine", ours)
    (tmp_path / "f").write_text("x")
    with pytest.raises(SaeRdpError, match="is not a folder"):
        check_out_folder(tmp_path / "f" / "run", ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "mine"]  # nothing written


def test_folder_holds_only(tmp_path):
    from sae_rdp_plugin.io import folder_holds_only

    (tmp_path / "sae.safetensors").write_text("")
    (tmp_path / ".cfg.json.ab12cd34.tmp").write_text("")  # a temporary name of ours
    known = {"sae.safetensors", "cfg.json"}.__contains__
    assert folder_holds_only(tmp_path, known)
    (tmp_path / "notes.md").write_text("mine")
    assert not folder_holds_only(tmp_path, known)


def test_check_out_file(tmp_path):
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.io import check_out_file

    src = tmp_path / "pmf.json"
    src.write_text("{}")
    assert check_out_file(tmp_path / "new" / "out.json") == tmp_path / "new" / "out.json"
    with pytest.raises(SaeRdpError, match="is the input file"):
        check_out_file(tmp_path / "." / "pmf.json", inputs=(src,), is_ours=lambda p: True)
    with pytest.raises(SaeRdpError, match="not written by this command"):
        check_out_file(src)
    assert check_out_file(src, is_ours=lambda p: p.read_text() == "{}") == src
    with pytest.raises(SaeRdpError, match="is a folder"):
        check_out_file(tmp_path)
    with pytest.raises(SaeRdpError, match="--dest"):
        check_out_file(src, flag="--dest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pmf.json"]  # nothing written
