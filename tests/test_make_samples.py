"""pipelines.tools.make_samples: deterministic sample shards and the hostile set's promised outcomes."""

import json
import tarfile

import pytest

from operators.tokenizers.base import MediaError, MissingStream, modality_of
from operators.tokenizers.registry import DEFAULT_TOKENIZER_FOR_MODALITY, build_tokenizer
from pipelines.common import ConfigError
from pipelines.tools import make_samples


def _members(path: str):
    with tarfile.open(path) as tar:
        return [(info.name, tar.extractfile(info).read()) for info in tar]


def test_sample_shards_are_deterministic_and_counted(tmp_path):
    first = make_samples.run(["--output", str(tmp_path / "a"), "--num-shards", "2", "--samples-per-shard", "5"])
    second = make_samples.write_sample_shards(str(tmp_path / "b"), 2, 5, seed=0)
    other = make_samples.write_sample_shards(str(tmp_path / "c"), 2, 5, seed=1)
    assert list(first["shards"].values()) == [5, 5] and len(first["broken"]) == 2
    for path_a, path_b, path_c in zip(first["shards"], second["shards"], other["shards"]):
        with open(path_a, "rb") as a, open(path_b, "rb") as b, open(path_c, "rb") as c:
            bytes_a = a.read()
            assert bytes_a == b.read() and bytes_a != c.read()
    members = _members(next(iter(first["shards"])))
    keys = {name.split(".", 1)[0] for name, _ in members}
    assert len(keys) == 5 and {name.rsplit(".", 1)[1] for name, _ in members} >= {"jpg", "mp4", "wav", "json", "txt"}
    record = json.loads(dict(members)["s000000-0000.json"])
    assert record["kind"] == "image" and record["caption"].startswith("a synthetic image")
    assert record["deliberately_broken"] is False
    assert sum(first["shards"].values()) == len(first["kinds"])


def test_default_set_has_every_kind_and_exact_duplicates(tmp_path):
    result = make_samples.write_sample_shards(str(tmp_path), 1, 8, seed=0)
    members = dict(_members(next(iter(result["shards"]))))
    assert set(result["kinds"].values()) - {"garbage.jpg"} == set(make_samples.SAMPLE_KINDS)
    (copy, original), = result["duplicates"].items()
    assert members[f"{copy}.jpg"] == members[f"{original}.jpg"] and members[f"{copy}.txt"] == members[f"{original}.txt"]
    assert json.loads(members[f"{copy}.json"])["duplicate_of"] == original
    audio = next(k for k, kind in result["kinds"].items() if kind == "audio")
    assert json.loads(members[f"{audio}.json"])["transcript"].startswith("a synthetic audio")
    text = next(k for k, kind in result["kinds"].items() if kind == "text")
    assert sorted(n for n in members if n.startswith(text)) == [f"{text}.json", f"{text}.txt"]


def test_broken_samples_fail_and_good_ones_tokenize(tmp_path):
    result = make_samples.write_sample_shards(str(tmp_path), 4, 4, seed=3)
    tokenizers = {m: build_tokenizer(n) for m, n in DEFAULT_TOKENIZER_FOR_MODALITY.items()}
    outcomes = {}
    for path in result["shards"]:
        for name, payload in _members(path):
            key, ext = name.split(".", 1)
            if modality_of(ext) is None:
                continue
            try:
                tokenizers[modality_of(ext)].encode(payload)
                outcomes[key] = "ok"
            except MediaError:
                outcomes[key] = "error"
    assert {k for k, v in outcomes.items() if v == "error"} == set(result["broken"])
    assert len(outcomes) == len(result["kinds"])


def test_deliberately_broken_samples_are_marked_by_key_and_record(tmp_path):
    result = make_samples.write_sample_shards(str(tmp_path), 2, 3, seed=0)
    prefix = make_samples.DELIBERATELY_BROKEN_PREFIX
    assert result["broken"] == ["broken-s000000-0002", "broken-s000001-0002"]
    assert [k for k in result["kinds"] if k.startswith(prefix)] == result["broken"]
    for path in result["shards"]:
        records = [json.loads(p) for n, p in _members(path) if n.endswith(".json")]
        assert {r["key"] for r in records if r["deliberately_broken"]} == {
            r["key"] for r in records if r["key"].startswith(prefix)
        } != set()


def test_hostile_set_outcomes_match_what_it_promises(tmp_path):
    result = make_samples.write_hostile_shards(str(tmp_path))
    assert sum(result["shards"].values()) == len(result["expected"])
    clean, truncated = sorted(result["shards"])
    tokenizers = {m: build_tokenizer(n) for m, n in DEFAULT_TOKENIZER_FOR_MODALITY.items()}
    names = []
    for name, payload in _members(clean):
        key, ext = name.rsplit(".", 1)
        names.append(name)
        if key == "../../x":  # the reader refuses the name; the payload itself is a fine JPEG
            continue
        if key == "audio-only-mp4":  # no video stream: documents route it to the audio tokenizer
            with pytest.raises(MissingStream, match="no video stream"):
                tokenizers["video"].encode(payload)
            assert result["expected"][key] == "row" and tokenizers["audio"].encode(payload).tokens.size > 2
        elif result["expected"][key] == "row":
            assert tokenizers[modality_of(ext)].encode(payload).tokens.size > 2, key
        else:
            with pytest.raises(MediaError):
                tokenizers[modality_of(ext)].encode(payload)
    assert "../../x.jpg" in names and len(names) == result["shards"][clean]
    read = []
    with pytest.raises(tarfile.ReadError):
        with tarfile.open(truncated, mode="r|") as tar:
            for info in tar:
                read.append(info.name)
                tar.extractfile(info).read()
    assert read == ["trunc-a.jpg", "trunc-b.wav", "trunc-c.jpg"]
    assert [k for k in ("trunc-a", "trunc-b", "trunc-c") if result["expected"][k] == "row"] == ["trunc-a", "trunc-b"]


def test_bad_flags_fail_before_writing(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        make_samples.run(["--output", str(not_a_dir)])
    with pytest.raises(ConfigError, match="at least 1"):
        make_samples.run(["--output", str(tmp_path / "o"), "--num-shards", "0"])
