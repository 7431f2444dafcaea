"""Training exports read back by their real readers: megatron-core's ``IndexedDataset``,
mosaicml-streaming's ``StreamingDataset`` and HF ``datasets``; the export stage end to end on
synthetic documents parts (the contract of the corpus job), byte-identical across runs,
worker counts and input sharding.

Readers: ``megatron-core`` and ``datasets`` install normally (``test`` extra).
``mosaicml-streaming`` pins ``numpy<2.2`` and ``transformers<5``, which this environment
cannot take (numpy 2.4), so it is installed with ``pip install --no-deps
mosaicml-streaming==0.13.0 zstd python-snappy catalogue brotli transformers``; its package
``__init__`` also imports its vision datasets, whose ``torchvision`` needs a CUDA torch
build, so :func:`import_streaming` registers an empty ``torchvision`` before importing it
(the MDS reading path never touches it). Tests skip, saying so, when a reader is missing.
"""

import glob
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
import types

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that

from operators.corpus.packing import pack_documents
from operators.corpus.shuffle import order_key, shard_for_key
from schemas.exports import token_dtype
from transforms.io.exports import mds
from transforms.io.exports.megatron import indexed_dataset
from transforms.io.exports.stage import ExportConfig, ExportCorpus

VOCAB = {"size": 300, "specials": {"pad": 0, "bos": 1, "eos": 2}, "ranges": {"text": {"start": 3, "size": 256}}}
SEED = 17


def import_streaming():
    """mosaicml-streaming, with an empty ``torchvision`` in place of the CUDA-only one."""
    if importlib.util.find_spec("streaming") is None:
        pytest.skip("mosaicml-streaming not installed (pip install --no-deps, see this module's docstring)")
    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.datasets", "torchvision.transforms",
                     "torchvision.transforms.functional"):
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = module
        sys.modules["torchvision.datasets"].VisionDataset = object
        sys.modules["torchvision.transforms.functional"].to_tensor = None
    import streaming

    return streaming


def indexed_dataset_class():
    module = pytest.importorskip("megatron.core.datasets.indexed_dataset",
                                 reason="megatron-core not installed (pip install -e '.[test]')")
    return module.IndexedDataset


def make_documents(rng, count, max_len=40, prefix="doc"):
    """(key, source, tokens) triples shaped like the corpus job's documents: BOS … EOS."""
    docs = []
    for i in range(count):
        body = rng.integers(3, VOCAB["size"], size=int(rng.integers(0, max_len)), dtype=np.int32)
        docs.append((f"{prefix}-{i:04d}", f"shard-{i % 3}.tar", np.concatenate([[1], body, [2]]).astype(np.int32)))
    return docs


def write_documents(output_dir, docs, parts):
    """The documents table as the corpus job writes it, split into ``parts`` Parquet files."""
    folder = os.path.join(output_dir, "documents")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for p in range(parts):
        chunk = docs[p::parts]
        table = pa.table({
            "key": [d[0] for d in chunk],
            "source": [d[1] for d in chunk],
            "tokens": pa.array([d[2].tolist() for d in chunk], pa.list_(pa.int32())),
            "num_tokens": pa.array([d[2].size for d in chunk], pa.int64()),
        })
        paths.append(os.path.join(folder, f"part{p}-00000.parquet"))
        pq.write_table(table, paths[-1])
    with open(os.path.join(output_dir, "__vocab.json"), "w") as f:
        json.dump(VOCAB, f)
    return paths


def expected_order(docs):
    return sorted(docs, key=lambda d: (order_key(SEED, d[0]), d[1]))


def run_export(output_dir, parts, num_shards, seq_len, options=(), formats=("megatron", "mds", "parquet")):
    config = ExportConfig(output_dir, tuple(formats), seq_len, "whole", SEED, num_shards, VOCAB,
                          token_dtype(VOCAB["size"]).name, "mediabeam build-corpus --export megatron,mds,parquet")
    seen = []

    def check(stats):
        assert len(stats) == 1
        seen.extend(stats)

    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(list(options))) as p:
        stats = p | "Export" >> ExportCorpus(parts, config)
        assert_that(stats, check)
    return seen[0] if seen else json.load(open(os.path.join(output_dir, "__export", "stats.json")))


def tree_bytes(folder):
    return {os.path.relpath(f, folder): open(f, "rb").read()
            for f in sorted(glob.glob(f"{folder}/**/*", recursive=True)) if os.path.isfile(f)}


# ---- formats, each read by its real reader ------------------------------------------------
def test_megatron_files_read_back_by_indexed_dataset(tmp_path):
    IndexedDataset = indexed_dataset_class()
    docs = [d[2] for d in make_documents(np.random.default_rng(0), 12)]
    for dtype in (np.uint16, np.int32):
        prefix = str(tmp_path / f"data-{np.dtype(dtype).name}")
        data, index = indexed_dataset(docs, np.dtype(dtype))
        open(prefix + ".bin", "wb").write(data)
        open(prefix + ".idx", "wb").write(index)
        dataset = IndexedDataset(prefix)
        assert len(dataset) == len(docs) and list(dataset.document_indices) == list(range(len(docs) + 1))
        assert dataset.index.dtype == dtype
        for i, doc in enumerate(docs):
            np.testing.assert_array_equal(dataset[i], doc)
    with pytest.raises(ValueError, match="fit"):
        indexed_dataset([np.array([70000], np.int32)], np.dtype(np.uint16))


def test_mds_files_read_back_by_streaming_dataset(tmp_path, monkeypatch):
    streaming = import_streaming()
    packed = pack_documents([d[2] for d in make_documents(np.random.default_rng(1), 30)], 16, pad_id=0)
    columns = {"tokens": "ndarray:uint16:16", "position_ids": "ndarray:int32:16", "document_ids": "ndarray:int32:16"}
    monkeypatch.setattr(mds, "SIZE_LIMIT", 2000)  # several shard files
    encoded = mds.encode_shards(columns, {"tokens": packed.tokens.astype(np.uint16),
                                          "position_ids": packed.position_ids, "document_ids": packed.document_ids})
    assert len(encoded) > 1
    folder = tmp_path / "mds" / "part-00000"
    folder.mkdir(parents=True)
    for name, data, _ in encoded:
        (folder / name).write_bytes(data)
        assert len(data) <= 2000
    root = mds.in_folder([entry for _, _, entry in encoded], "part-00000")
    (tmp_path / "mds" / "index.json").write_bytes(mds.index_json(root))
    dataset = streaming.StreamingDataset(local=str(tmp_path / "mds"), shuffle=False, batch_size=1)
    assert dataset.num_samples == packed.num_sequences
    for i in range(packed.num_sequences):
        sample = dataset[i]
        np.testing.assert_array_equal(sample["tokens"], packed.tokens[i])
        np.testing.assert_array_equal(sample["position_ids"], packed.position_ids[i])
        np.testing.assert_array_equal(sample["document_ids"], packed.document_ids[i])


# ---- the export stage ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export"))
    docs = make_documents(np.random.default_rng(2), 60)
    docs += [(docs[0][0], "again.tar", docs[1][2]), (docs[0][0], "zz.tar", docs[2][2])]  # one key, 3 shards
    parts = write_documents(out, docs, parts=3)
    stats = run_export(out, parts, num_shards=3, seq_len=32)
    return out, docs, stats


def test_every_export_holds_the_shuffled_documents(exported):
    out, docs, stats = exported
    ordered = expected_order(docs)
    assert stats["documents"] == len(docs) and stats["tokens"] == sum(d[2].size for d in docs)
    assert stats["shards"] == 3 and 0 < stats["padding_fraction"] < 1
    # Megatron: documents in the global order over the parts, part by part
    IndexedDataset = indexed_dataset_class()
    prefixes = sorted(f[:-4] for f in glob.glob(f"{out}/__export/megatron/*.idx"))
    readers = [IndexedDataset(prefix) for prefix in prefixes]  # alive while their mmaps are read
    megatron_docs = [doc for reader in readers for doc in reader]
    assert len(megatron_docs) == len(docs)
    for got, (_, _, tokens) in zip(megatron_docs, ordered):
        np.testing.assert_array_equal(got, tokens)
    blend = open(f"{out}/__export/megatron/data_args.txt").read().split()
    assert [f"{out}/__export/megatron/{p}" for p in blend[1::2]] == prefixes
    assert sum(map(int, blend[::2])) == stats["tokens"]
    # each shard is packed on its own: the reference is per shard, shards concatenated
    expected = []
    first = 0
    for shard in range(3):
        members = [d[2] for d in ordered if shard_for_key(SEED, d[0], 3) == shard]
        expected.append(pack_documents(members, 32, pad_id=0, first_document_id=first))
        first += len(members)
    tokens = np.concatenate([p.tokens for p in expected])
    positions = np.concatenate([p.position_ids for p in expected])
    document_ids = np.concatenate([p.document_ids for p in expected])
    assert stats["sequences"] == len(tokens) and stats["padding"] == sum(p.num_padding for p in expected)
    # MDS through StreamingDataset
    streaming = import_streaming()
    dataset = streaming.StreamingDataset(local=f"{out}/__export/mds", shuffle=False, batch_size=1)
    assert dataset.num_samples == len(tokens)
    for i in range(len(tokens)):
        np.testing.assert_array_equal(dataset[i]["tokens"], tokens[i])
        np.testing.assert_array_equal(dataset[i]["document_ids"], document_ids[i])
    # Parquet through HF datasets
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=sorted(glob.glob(f"{out}/__export/parquet/*.parquet")),
                               split="train", cache_dir=os.path.join(out, "hf-cache"))
    np.testing.assert_array_equal(np.array(ds["input_ids"]), tokens)
    np.testing.assert_array_equal(np.array(ds["position_ids"]), positions)
    np.testing.assert_array_equal(np.array(ds["document_ids"]), document_ids)
    for row_keys, ids in zip(ds["keys"], document_ids):
        ids = [int(i) for i in ids if i >= 0]
        assert row_keys == [ordered[i][0] for n, i in enumerate(ids) if n == 0 or i != ids[n - 1]]


def test_megatron_gpt_dataset_trains_on_the_export(exported, tmp_path):
    """The blend in data_args.txt feeds megatron-core's GPTDataset as docs/exports.md shows."""
    indexed_dataset_class()
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    out, docs, _ = exported
    folder = str(tmp_path / "megatron")  # GPTDataset caches its indices next to the data: use a copy
    shutil.copytree(f"{out}/__export/megatron", folder)
    pairs = open(f"{folder}/data_args.txt").read().split()

    class Tokenizer:  # what GPTDataset uses of a tokenizer
        eod, pad, vocab_size, unique_identifiers = 2, 0, VOCAB["size"], {"class": "mediabeam-test"}

    config = GPTDatasetConfig(random_seed=1, sequence_length=16, split="100,0,0", tokenizer=Tokenizer(),
                              blend=([f"{folder}/{p}" for p in pairs[1::2]], [float(w) for w in pairs[::2]]),
                              reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=False)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [20, 0, 0], lambda: True, config).build()
    assert len(train) >= 20  # the blend rounds up per dataset
    all_tokens = np.concatenate([d[2] for d in docs])
    for i in range(len(train)):
        sample = train[i]
        tokens, positions = np.asarray(sample["tokens"]), np.asarray(sample["position_ids"])
        assert np.isin(tokens, all_tokens).all()
        after_eod = np.flatnonzero(tokens[:-1] == 2) + 1
        assert (positions[after_eod] == 0).all()  # positions restart at every document


def test_dataset_card_loads_and_says_how_it_was_built(exported, tmp_path):
    out, docs, stats = exported
    card = open(f"{out}/__export/parquet/README.md").read()
    assert "mediabeam build-corpus --export megatron,mds,parquet" in card
    assert f"| {stats['documents']} | {stats['sequences']} | {stats['tokens']} |" in card
    assert "`pad` = 0" in card
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(f"{out}/__export/parquet", split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == stats["sequences"]


def test_exports_are_byte_identical_across_runs_workers_and_input_sharding(exported, tmp_path):
    out, docs, _ = exported
    reference = tree_bytes(f"{out}/__export")
    for name, parts, options in (("again", 3, ()), ("two-workers", 5,
                                 ("--direct_num_workers=2", "--direct_running_mode=multi_threading"))):
        other = str(tmp_path / name)
        run_export(other, write_documents(other, list(reversed(docs)), parts), 3, 32, options)
        got = tree_bytes(f"{other}/__export")
        assert sorted(got) == sorted(reference)
        for path, data in reference.items():
            assert got[path] == data, path


# ---- build-corpus --export -----------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--export", "megatron,tfrecord"], "unknown"),
    (["--export", "all", "--seq-len", "0"], "--seq-len"),
    (["--export", "mds", "--shuffle-seed", "-1"], "--shuffle-seed"),
    (["--export", "mds", "--export-shards", "0"], "--export-shards"),
    (["--export", "mds", "--format", "webdataset"], "keep parquet"),
    (["--seq-len", "128", "--packing", "concat"], "--seq-len, --packing: used by the training exports only"),
])
def test_export_flags_fail_before_the_pipeline(tmp_path, flags, message):
    from pipelines import build_corpus
    from pipelines.common import ConfigError

    with pytest.raises(ConfigError, match=message):
        build_corpus.run(["--input", str(tmp_path / "none.tar"), "--output", str(tmp_path / "out"), *flags])


def test_run_export_reads_the_documents_of_this_runs_shards(tmp_path):
    import argparse

    from pipelines.corpus_export import run_export
    from transforms.io.layout import manifest_path

    out = str(tmp_path / "out")
    docs = make_documents(np.random.default_rng(4), 20)
    parts = write_documents(out, docs, parts=2)
    stray = write_documents(str(tmp_path / "other"), make_documents(np.random.default_rng(5), 3, prefix="x"), 1)
    os.replace(stray[0], os.path.join(out, "documents", "stray-00000.parquet"))  # no manifest lists it
    for i, part in enumerate(parts):
        path = manifest_path(out, f"in-{i}.tar")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rows = pq.read_metadata(part).num_rows
        json.dump({"source": f"in-{i}.tar", "rows": rows, "files": [os.path.relpath(part, out)]}, open(path, "w"))
    os.makedirs(f"{out}/__export/parquet")
    open(f"{out}/__export/parquet/part-00009.parquet", "wb").write(b"stale")
    args = argparse.Namespace(output=out, export_formats=("parquet",), seq_len=16, packing="concat", shuffle_seed=SEED,
                              export_shards=2, command="mediabeam build-corpus --export parquet")
    summary = run_export(args, PipelineOptions([]), ["in-0.tar", "in-1.tar"])
    assert summary["export"]["documents"] == len(docs) and summary["export"]["formats"] == ["parquet"]
    assert summary["export"]["packing"] == "concat" and summary["export"]["sequences"] <= 2 + sum(
        d[2].size for d in docs) // 16  # concat: at most each shard's last sequence is partly padding
    table = pq.read_table(sorted(glob.glob(f"{out}/__export/parquet/*.parquet")))
    assert sorted({k for row in table.column("keys").to_pylist() for k in row}) == sorted(d[0] for d in docs)
    assert not os.path.exists(f"{out}/__export/parquet/part-00009.parquet")  # the old export is replaced whole
    assert run_export(argparse.Namespace(export_formats=()), None, []) == {}
    manifest = json.load(open(manifest_path(out, "in-0.tar")))
    manifest["rows"] += 1  # a document the table lacks: the export refuses to lose it silently
    json.dump(manifest, open(manifest_path(out, "in-0.tar"), "w"))
    with pytest.raises(RuntimeError, match="manifests count 21"):
        run_export(args, PipelineOptions([]), ["in-0.tar", "in-1.tar"])
    os.remove(os.path.join(out, "__vocab.json"))
    with pytest.raises(RuntimeError, match="__vocab.json is missing"):
        run_export(args, PipelineOptions([]), ["in-0.tar", "in-1.tar"])


def test_build_corpus_exports_its_documents(tmp_path):
    from pipelines import build_corpus
    from pipelines.tools.make_samples import write_sample_shards

    shards = write_sample_shards(str(tmp_path / "in"), num_shards=2, samples_per_shard=3, seed=5)["shards"]
    out = str(tmp_path / "out")
    flags = ["--input", *shards, "--output", out, "--no-report", "--export", "all", "--seq-len", "256",
             "--export-shards", "2", "--shuffle-seed", str(SEED)]
    summary = build_corpus.run(flags)
    table = pq.read_table(sorted(glob.glob(f"{out}/documents/*.parquet")))
    docs = [(k, s, np.array(t, np.int32)) for k, s, t in zip(*(table.column(c).to_pylist()
                                                                 for c in ("key", "source", "tokens")))]
    export = summary["export"]
    assert export["documents"] == summary["rows"] == len(docs) > 0
    assert export["tokens"] == sum(d[2].size for d in docs) and export["seq_len"] == 256
    assert pyarrow.dataset.dataset(out).to_table().num_rows == len(docs)  # the exports stay out of sight
    IndexedDataset = indexed_dataset_class()
    readers = [IndexedDataset(f[:-4]) for f in sorted(glob.glob(f"{out}/__export/megatron/*.idx"))]
    got = [doc for reader in readers for doc in reader]
    for mine, (_, _, tokens) in zip(got, expected_order(docs), strict=True):
        np.testing.assert_array_equal(mine, tokens)
    before = tree_bytes(f"{out}/__export")
    again = build_corpus.run(flags + ["--resume"])  # nothing left to tokenize: the export is rewritten
    assert again["export"]["sequences"] == export["sequences"]
    after = tree_bytes(f"{out}/__export")
    assert after.pop("parquet/README.md").endswith(b" --resume\n```\n")  # the card names the command
    before.pop("parquet/README.md")
    assert after == before
