"""experiments/table2/pack_site.py and ``stage.sh site``: the device's wheels installed for its Python, carried as one
compressed archive, checked and unpacked on the device; bad input refused before anything is written (pip and bash,
no device). The wheels are small real ones built here (pip installs them)."""

import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "experiments/table2/stage.sh"
spec = importlib.util.spec_from_file_location("pack_site", ROOT / "experiments/table2/pack_site.py")
pack_site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pack_site)


def _wheel(dest: Path, name: str, files: dict[str, bytes], scripts: dict[str, str] | None = None) -> Path:
    """A pure-Python wheel ``name``-1.0 holding ``files`` (and console ``scripts``), as pip accepts it."""
    dist = f"{name}-1.0.dist-info"
    meta = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if scripts:
        lines = "".join(f"{k} = {v}\n" for k, v in scripts.items())
        meta[f"{dist}/entry_points.txt"] = f"[console_scripts]\n{lines}".encode()
    everything = {**files, **meta}
    record = "".join(f"{p},,\n" for p in everything) + f"{dist}/RECORD,,\n"
    path = dest / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, data in everything.items():
            z.writestr(p, data)
        z.writestr(f"{dist}/RECORD", record)
    return path


def _wheels(src: Path) -> Path:
    src.mkdir()
    _wheel(src, "toypkg", {"toypkg/__init__.py": b"VALUE = 7\n", "toypkg/data.txt": b"x" * 5000}, {"toy": "toypkg:x"})
    _wheel(src, "wandb", {"wandb/__init__.py": b"", "wandb/bin/wandb-core": b"\x7fELF" + os.urandom(3000)})
    return src


def _names(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def test_the_archive_holds_the_installed_wheels_without_scripts_or_wandbs_programs(tmp_path):
    src, out = _wheels(tmp_path / "src"), tmp_path / "carry" / "site"
    assert pack_site.main([str(src), str(out)]) == 0
    names = _names(out / "site.tar.xz")
    assert {"toypkg/__init__.py", "toypkg/data.txt", "wandb/__init__.py"} <= names
    assert any(n.startswith("toypkg-1.0.dist-info/") for n in names)
    assert not any(n.startswith(("bin/", "wandb/bin/")) for n in names), sorted(names)
    digest = hashlib.sha256((out / "site.tar.xz").read_bytes()).hexdigest()
    assert (out / "SHA256SUMS").read_text() == f"{digest}  site.tar.xz\n"
    listed = {line.split()[1]: line.split()[0] for line in (out / "WHEELS").read_text().splitlines()}
    assert listed == {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in src.glob("*.whl")}
    assert sorted(p.name for p in out.iterdir()) == [".pack_site", "SHA256SUMS", "WHEELS", "site.tar.xz"]
    assert not [p for p in out.parent.iterdir() if p != out]  # no temporary folder left beside it


def test_the_same_wheels_keep_the_archive_and_a_changed_wheel_remakes_it(tmp_path):
    src, out = _wheels(tmp_path / "src"), tmp_path / "site"
    assert pack_site.main([str(src), str(out)]) == 0
    os.utime(out / "site.tar.xz", ns=(1, 1))  # a mark the second call would not leave
    assert pack_site.main([str(src), str(out)]) == 0 and (out / "site.tar.xz").stat().st_mtime_ns == 1
    _wheel(src, "toypkg", {"toypkg/__init__.py": b"VALUE = 8\n"})  # the same name, other contents
    assert pack_site.main([str(src), str(out)]) == 0 and (out / "site.tar.xz").stat().st_mtime_ns != 1
    assert "toypkg/data.txt" not in _names(out / "site.tar.xz")


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_src", "no such folder"),
        ("no_wheels", "no .whl files"),
        ("twice", "more than one wheel of toypkg"),
        ("foreign_out", "is a non-empty folder this command did not write"),
        ("out_is_file", "exists and is not a folder"),
        ("out_inside_src", "inside the wheels folder"),
        ("broken_wheel", "pip could not install the wheels"),
    ],
)
def test_bad_input_is_refused_with_one_line_and_nothing_written(tmp_path, capsys, case, message):
    src, out = tmp_path / "src", tmp_path / "site"
    if case != "no_src":
        _wheels(src) if case != "no_wheels" else src.mkdir()
    if case == "twice":
        (src / "toypkg-0.9-py3-none-any.whl").write_bytes((src / "toypkg-1.0-py3-none-any.whl").read_bytes())
    if case == "foreign_out":
        out.mkdir()
        (out / "mine.txt").write_text("kept")
    if case == "out_is_file":
        out.write_text("a file")
    if case == "out_inside_src":
        out = src / "site"
    if case == "broken_wheel":
        (src / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert pack_site.main([str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    if case == "foreign_out":
        assert (out / "mine.txt").read_text() == "kept"


def _stage(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """stage.sh with a python that runs the unpacking and logs the import check (SAELens is not installed here)."""
    fake = tmp / "py"
    unpack = f'case "$2" in *tarfile*) exec {sys.executable} "$@" ;; esac'
    fake.write_text(f'#!/bin/sh\n{unpack}\necho "$@" >> {tmp}/py.log\n')
    fake.chmod(0o755)
    env = {**os.environ, "T2_WORK": str(tmp / "work"), "T2_SITE": str(tmp / "device_site"), "OUT": str(tmp / "out"),
           "PYTHON": str(fake), "T2_WHL": str(tmp / "no_wheels")}  # fmt: skip
    return subprocess.run(["bash", str(STAGE), *args], env=env, capture_output=True, text=True)


def test_stage_site_unpacks_the_checked_archive_and_checks_the_imports(tmp_path):
    src, out = _wheels(tmp_path / "src"), tmp_path / "site"
    assert pack_site.main([str(src), str(out)]) == 0
    r = _stage(tmp_path, "site", str(out))
    assert r.returncode == 0, r.stderr
    site = tmp_path / "device_site"
    assert (site / "toypkg" / "__init__.py").read_text() == "VALUE = 7\n" and not (site / "wandb" / "bin").exists()
    assert "import sae_lens" in (tmp_path / "py.log").read_text()
    probe = subprocess.run(
        [sys.executable, "-c", "import toypkg; print(toypkg.VALUE)"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "7", probe.stderr


def test_stage_site_refuses_a_changed_archive_a_foreign_folder_and_a_missing_one(tmp_path):
    src, out = _wheels(tmp_path / "src"), tmp_path / "site"
    r = _stage(tmp_path, "site", str(tmp_path / "absent"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: site: ") and "not a folder here" in r.stderr
    r = _stage(tmp_path, "site")
    assert r.returncode == 2 and "site takes one folder" in r.stderr
    assert not (tmp_path / "work").exists()  # usage errors: checked before any folder is made
    assert pack_site.main([str(src), str(out)]) == 0
    data = bytearray((out / "site.tar.xz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "site.tar.xz").write_bytes(bytes(data))
    r = _stage(tmp_path, "site", str(out))
    assert r.returncode == 3 and r.stderr.strip() == f"error: {out}/site.tar.xz does not match its SHA256SUMS"
    assert not (tmp_path / "device_site").exists() and not (tmp_path / "py.log").exists()
    (out / ".pack_site").unlink()
    r = _stage(tmp_path, "site", str(out))
    assert r.returncode == 3 and "not a pack_site.py folder" in r.stderr


def test_a_usage_error_is_one_line_and_exit_2():
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments/table2/pack_site.py"), "only-one-argument"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: pack_site.py: ") and len(r.stderr.splitlines()) == 1
