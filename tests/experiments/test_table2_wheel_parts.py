"""experiments/table2/split_wheels.sh, wheel_parts.sh and their users (probes.sh put / join, stage.sh wheels HALF):
wheels carried in two halves (one device call each) come back byte for byte, and a wrong or missing half is
refused before anything is installed (bash, no device)."""

import hashlib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPLIT = ROOT / "experiments/table2/split_wheels.sh"
STAGE = ROOT / "experiments/table2/stage.sh"
PROBES = ROOT / "experiments/table2/probes.sh"


def _wheels(src: Path) -> dict[str, bytes]:
    src.mkdir()
    wheels = {
        "sae_probes-0.4.2-py3-none-any.whl": os.urandom(10_001),  # odd size: the halves differ by one byte
        "sae_bench-0.6.0-py3-none-any.whl": os.urandom(300),
    }
    for name, data in wheels.items():
        (src / name).write_bytes(data)
    return wheels


def _probes(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "T2_PROBES_PARTS": str(tmp / "parts"), "T2_PROBES_JOINED": str(tmp / "joined")}
    return subprocess.run(["bash", str(PROBES), *args], env=env, capture_output=True, text=True)


def _split(tmp: Path) -> tuple[dict[str, bytes], Path, Path]:
    wheels = _wheels(tmp / "src")
    a, b = tmp / "p1", tmp / "p2"
    r = subprocess.run(["bash", str(SPLIT), str(tmp / "src"), str(a), str(b)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return wheels, a, b


def test_halves_put_in_two_calls_join_to_the_same_wheels(tmp_path):
    wheels, a, b = _split(tmp_path)
    sizes = [p.stat().st_size for p in [*a.glob("*.part*"), *b.glob("*.part*")]]
    assert sorted(sizes) == [5000, 5001]  # each half carries about half of the largest wheel
    assert [p.name for p in a.glob("*.part*")] == ["sae_probes-0.4.2-py3-none-any.whl.part0"]
    assert (b / "sae_bench-0.6.0-py3-none-any.whl").read_bytes() == wheels["sae_bench-0.6.0-py3-none-any.whl"]
    sums = {ln.split()[1]: ln.split()[0] for ln in (b / "SHA256SUMS").read_text().splitlines()}
    assert sums == {n: hashlib.sha256(d).hexdigest() for n, d in wheels.items()}  # independent of the script
    for half in (a, b):
        r = _probes(tmp_path, "put", str(half))
        assert r.returncode == 0, r.stderr
    r = _probes(tmp_path, "join")
    assert r.returncode == 0, r.stderr
    joined = tmp_path / "joined"
    assert {p.name: p.read_bytes() for p in joined.glob("*.whl")} == wheels
    r = _probes(tmp_path, "join")  # again: replaces its own folder
    assert r.returncode == 0 and {p.name for p in joined.glob("*.whl")} == set(wheels)


def test_a_missing_or_foreign_half_is_refused_and_nothing_joined(tmp_path):
    wheels, a, b = _split(tmp_path)
    r = _probes(tmp_path, "put", str(b))
    assert r.returncode == 0
    r = _probes(tmp_path, "join")  # the first half never came
    assert r.returncode == 3 and r.stderr.strip() == (
        f"error: sae_probes-0.4.2-py3-none-any.whl.part0: not in {tmp_path / 'parts'} (put both halves)"
    )
    assert not (tmp_path / "joined").exists() and not (tmp_path / "joined.tmp").exists()
    # a first half from another split (other bytes) is caught by the checksum
    other = tmp_path / "other"
    other.mkdir()
    _wheels_other, a2, _ = _split(other)
    r = _probes(tmp_path, "put", str(a2))
    assert r.returncode == 0
    r = _probes(tmp_path, "join")
    assert r.returncode == 3 and "do not match" in r.stderr and r.stderr.startswith("error: ")
    assert not (tmp_path / "joined").exists() and not (tmp_path / "joined.tmp").exists()


def test_put_refuses_a_folder_split_wheels_did_not_write(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.whl").write_bytes(b"x")
    r = _probes(tmp_path, "put", str(plain))
    assert r.returncode == 3 and "not a split_wheels.sh folder" in r.stderr
    assert not (tmp_path / "parts").exists()
    r = _probes(tmp_path, "put")
    assert r.returncode == 2 and r.stderr.strip() == "error: usage: probes.sh put <carried folder>"


def test_join_never_replaces_a_folder_it_did_not_write(tmp_path):
    wheels, a, b = _split(tmp_path)
    for half in (a, b):
        assert _probes(tmp_path, "put", str(half)).returncode == 0
    mine = tmp_path / "joined"
    mine.mkdir()
    (mine / "keep.txt").write_text("user data")
    r = _probes(tmp_path, "join")
    assert r.returncode == 3 and "was not written by a join" in r.stderr
    assert (mine / "keep.txt").read_text() == "user data"


def test_split_refuses_to_overwrite_a_foreign_folder(tmp_path):
    _wheels(tmp_path / "src")
    foreign = tmp_path / "p1"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    r = subprocess.run(
        ["bash", str(SPLIT), str(tmp_path / "src"), str(foreign), str(tmp_path / "p2")], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.strip() == f"error: {foreign}: exists and was not written by split_wheels.sh"
    assert (foreign / "notes.txt").read_text() == "mine" and not (tmp_path / "p2").exists()


def _fake_python(tmp: Path) -> Path:
    """A python that logs its arguments (pip install, the import check) and succeeds."""
    fake = tmp / "python-logging"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp / "py.log"}\necho "wheels ok"\n')
    fake.chmod(0o755)
    return fake


def _stage(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "T2_WORK": str(tmp / "work"),
        "T2_SITE": str(tmp / "site"),
        "OUT": str(tmp / "out"),
        "PYTHON": str(_fake_python(tmp)),
        "T2_WHL": str(tmp / "no_whl"),
        "T2_WHL_PARTS": str(tmp / "whl_parts"),
    }
    return subprocess.run(["bash", str(STAGE), *args], env=env, capture_output=True, text=True)


def test_stage_wheels_installs_once_both_halves_are_put(tmp_path):
    wheels, a, b = _split(tmp_path)
    r = _stage(tmp_path, "wheels", str(a))
    assert r.returncode == 0 and "the other half next" in r.stdout
    assert not (tmp_path / "py.log").exists()  # nothing installed from one half
    r = _stage(tmp_path, "wheels", str(b))
    assert r.returncode == 0, r.stderr
    joined = tmp_path / "whl_parts.joined"
    assert {p.name: p.read_bytes() for p in joined.glob("*.whl")} == wheels
    log = (tmp_path / "py.log").read_text()
    assert f"--target {tmp_path / 'site'}" in log and all(str(joined / n) in log for n in wheels)


def test_stage_wheels_refuses_a_mismatched_half_and_a_missing_folder(tmp_path):
    _, a, b = _split(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, a2, _ = _split(other)
    assert _stage(tmp_path, "wheels", str(a2)).returncode == 0
    r = _stage(tmp_path, "wheels", str(b))
    assert r.returncode == 3 and "do not match" in r.stderr and not (tmp_path / "py.log").exists()
    r = _stage(tmp_path, "wheels", str(tmp_path / "absent"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: wheels: ") and "not a folder here" in r.stderr
    r = _stage(tmp_path, "wheels")  # no .whl, and the mismatched halves still there: refused again
    assert r.returncode == 3 and "do not match" in r.stderr


def test_the_other_wheels_balance_the_two_halves_and_still_join(tmp_path):
    """Each half must fit one call beside the tree: the whole wheels go, largest first, to the smaller half, so the
    halves differ by at most the largest of them; whole wheels in either half join as before."""
    src = tmp_path / "src"
    src.mkdir()
    wheels = {
        "big-1.0-py3-none-any.whl": os.urandom(10_000),
        "b-1.0-py3-none-any.whl": os.urandom(4_000),
        "c-1.0-py3-none-any.whl": os.urandom(3_000),
        "d-1.0-py3-none-any.whl": os.urandom(100),
    }
    for name, data in wheels.items():
        (src / name).write_bytes(data)
    a, b = tmp_path / "p1", tmp_path / "p2"
    r = subprocess.run(["bash", str(SPLIT), str(src), str(a), str(b)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    def size(d: Path) -> int:
        return sum(p.stat().st_size for p in d.glob("*.whl*"))

    assert size(a) + size(b) == 17_100
    assert abs(size(a) - size(b)) <= 4_000 and {size(a), size(b)} == {9_000, 8_100}  # largest-first greedy
    for half in (a, b):
        assert _probes(tmp_path, "put", str(half)).returncode == 0
    r = _probes(tmp_path, "join")
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "joined").glob("*.whl")} == wheels
