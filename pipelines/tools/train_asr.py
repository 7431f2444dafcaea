"""``mediabeam train-asr``: trains the embedded streaming ASR model on synthetic speech.

Generates spoken digits and a small command vocabulary offline with espeak-ng (several accents,
voice variants, speaking rates and pitches, with added noise and gain changes), trains a small
multi-look-ahead cache-aware FastConformer CTC model with a SentencePiece vocabulary on CPU within
a time budget (optionally also on 6-40 s digit strings and command sequences, ``--num-long-train``),
reports the WER on voice variants never used in training, offline and streaming, for short
utterances and for 20-60 s digit strings and command sequences, and writes the model as a
NeMo-format ``.nemo`` archive (default: ``out/train-asr/asr_default.nemo``; the shipped embedded
model under ``operators/assets/`` is replaced only with ``--install-as-default``).
Needs ``espeak-ng`` (``apt-get install -y espeak-ng``).
"""

import argparse
import io
import json
import math
import multiprocessing
import os
import pickle
import random
import shutil
import subprocess
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from operators.asr.config import EncoderConfig, ModelConfig
from operators.asr.embedded_vocabulary import COMMANDS, DIGITS, WORDS
from operators.asr.model import FastConformerASR
from operators.asr.nemo_checkpoint import EMBEDDED_MODEL, load_nemo, read_nemo_archive, save_nemo
from operators.asr.streaming import StreamingASR
from operators.asr.vocabulary import SentencePieceVocabulary
from pipelines.common import ConfigError

ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
TRAIN_VARIANTS = [
    "m1", "m2", "m3", "m5", "m7", "f1", "f2", "f3", "f5", "klatt", "klatt3", "klatt4",
    "adam", "Alex", "Alicia", "Andrea", "benjamin", "boris", "caleb", "edward", "Gene", "iven",
    "Jacky", "Lee", "Marco", "Michael", "norbert", "pablo", "paul", "pedro", "Storm", "belinda",
]
HELD_OUT_VARIANTS = ["m4", "m6", "f4", "klatt2", "Andy", "Annie", "david", "john", "linda", "max"]
LONG_TRAIN_SECONDS = (6.0, 40.0)
CONTEXTS = ((70, 13), (70, 6), (70, 1), (70, 0))
SAMPLE_RATE = 16000


def synthesize(text: str, voice: str, rate: int, pitch: int, gap: int) -> np.ndarray:
    """Speaks ``text`` with espeak-ng; returns 16 kHz float32 mono audio."""
    from scipy.signal import resample_poly

    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-g", str(gap), "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    source_rate = int.from_bytes(wav[24:28], "little")
    samples = np.frombuffer(wav[44 : 44 + (len(wav) - 44) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    return resample_poly(samples, SAMPLE_RATE, source_rate).astype(np.float32)


def _noisy(audio: np.ndarray, rng: random.Random, noise_rng: np.random.Generator) -> np.ndarray:
    """Pads ``audio`` with silence, changes its gain and adds white or brown noise at 10-40 dB SNR."""
    lead = np.zeros(int(rng.uniform(0.0, 0.4) * SAMPLE_RATE), np.float32)
    tail = np.zeros(int(rng.uniform(0.05, 0.4) * SAMPLE_RATE), np.float32)
    audio = np.concatenate([lead, audio, tail]) * rng.uniform(0.3, 1.5)
    power = float(np.mean(audio**2)) + 1e-12
    snr_db = rng.uniform(10.0, 40.0)
    noise = noise_rng.standard_normal(len(audio)).astype(np.float32)
    if rng.random() < 0.5:  # brown-ish noise for variety
        noise = np.cumsum(noise).astype(np.float32)
        noise -= np.convolve(noise, np.ones(64) / 64, mode="same").astype(np.float32)
    noise *= math.sqrt(power / (10 ** (snr_db / 10)) / (float(np.mean(noise**2)) + 1e-12))
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def _utterance(seed: int, variants: Sequence[str]) -> Tuple[np.ndarray, str, str]:
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 4))]
    text = " ".join(words)
    voice = f"{rng.choice(ACCENTS)}+{rng.choice(variants)}"
    audio = synthesize(text, voice, rng.randint(120, 210), rng.randint(25, 75), rng.randint(0, 8))
    return _noisy(audio, rng, np.random.default_rng(seed)), text, voice


def long_utterance(seed: int, variants: Sequence[str], seconds: Tuple[float, float],
                   words: Sequence[str] = WORDS) -> Tuple[np.ndarray, str, str]:
    """A digit string or command sequence lasting about ``seconds`` (drawn in the range), one voice.

    Half the utterances are read by espeak-ng in one go (list prosody over up to ~100 words, as a
    user reading out a long string would make them); the other half are phrases of 1-16 words
    joined with pauses of 0-0.6 s.
    """
    rng = random.Random(seed)
    voice = f"{rng.choice(ACCENTS)}+{rng.choice(variants)}"
    rate, pitch, gap = rng.randint(120, 210), rng.randint(25, 75), rng.randint(0, 8)
    target = rng.uniform(*seconds) * SAMPLE_RATE
    in_one_go = rng.random() < 0.5
    pieces, spoken, length = [], [], 0
    while length < target:
        remaining = max(1, math.ceil((target - length) / (0.6 * SAMPLE_RATE)))  # at most ~0.6 s a word
        phrase = [rng.choice(words) for _ in range(remaining if in_one_go else min(remaining, rng.randint(1, 16)))]
        audio = synthesize(" ".join(phrase), voice, rate, pitch, gap)
        pause = np.zeros(int(rng.uniform(0.0, 0.6) * SAMPLE_RATE), np.float32)
        pieces += [audio, pause]
        spoken += phrase
        length += len(audio) + len(pause)
    return _noisy(np.concatenate(pieces), rng, np.random.default_rng(seed)), " ".join(spoken), voice


def long_test_set_of(count: int, seed: int, workers: int) -> List[Tuple[np.ndarray, str, str]]:
    """The long held-out set: 20-60 s digit strings and command sequences (alternating), held-out voices."""
    return generate_long(count, HELD_OUT_VARIANTS, seed, workers, (20.0, 56.0), (DIGITS, COMMANDS))


def generate_long(count: int, variants: Sequence[str], seed: int, workers: int, seconds: Tuple[float, float],
                  pools: Sequence[Sequence[str]]) -> List[Tuple[np.ndarray, str, str]]:
    """Synthesises ``count`` long utterances; utterance ``i`` draws its words from ``pools[i % len(pools)]``."""
    jobs = [(seed * 1_000_003 + i, tuple(variants), seconds, tuple(pools[i % len(pools)])) for i in range(count)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.starmap(long_utterance, jobs)


def _utterance_job(args):
    return _utterance(*args)


def generate(count: int, variants: Sequence[str], seed: int, workers: int) -> List[Tuple[np.ndarray, str, str]]:
    """Synthesises ``count`` noisy utterances with voice variants drawn from ``variants``."""
    jobs = [(seed * 1_000_003 + i, tuple(variants)) for i in range(count)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_utterance_job, jobs, chunksize=64)


def _cached(cache_dir: Optional[str], name: str, make):
    """Returns ``make()``, stored as ``<cache_dir>/<name>.pkl`` so reruns skip the synthesis."""
    if not cache_dir:
        return make()
    path = os.path.join(cache_dir, f"{name}.pkl")
    if os.path.exists(path):
        with open(path, "rb") as handle:
            return pickle.load(handle)
    data = make()
    os.makedirs(cache_dir, exist_ok=True)
    with open(path + ".tmp", "wb") as handle:
        pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(path + ".tmp", path)
    return data


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> bytes:
    """Trains a small unigram SentencePiece model on the transcripts; returns its bytes."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        bos_id=-1, eos_id=-1, unk_id=0, hard_vocab_limit=False, character_coverage=1.0,
        minloglevel=2,
    )
    return model.getvalue()


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word-level Levenshtein distance summed over utterances / reference words."""
    errors = words = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        row = list(range(len(h) + 1))
        for i, rw in enumerate(r, 1):
            prev, row[0] = row[0], i
            for j, hw in enumerate(h, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
        errors += row[len(h)]
        words += len(r)
    return errors / max(1, words)


def _spec_augment(features: torch.Tensor, lengths: torch.Tensor, rng: random.Random) -> torch.Tensor:
    features = features.clone()
    for row in range(features.shape[0]):
        for _ in range(2):
            width = rng.randint(0, 12)
            start = rng.randint(0, features.shape[1] - width)
            features[row, start : start + width, :] = 0.0
        for _ in range(2):
            width = rng.randint(0, max(1, int(lengths[row]) // 20))
            start = rng.randint(0, max(0, int(lengths[row]) - width))
            features[row, :, start : start + width] = 0.0
    return features


def init_weights(model: FastConformerASR) -> None:
    """He initialisation of the subsampling convs (ReLU) with zero biases.

    PyTorch's default init shrinks the signal through the three ReLU conv stages so much that the
    encoder output barely depends on the input and CTC training stalls at the blank plateau.
    """
    with torch.no_grad():
        for module in model.encoder.pre_encode.conv:
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                torch.nn.init.zeros_(module.bias)


def train(
    model: FastConformerASR,
    features: List[torch.Tensor],
    targets: List[List[int]],
    minutes: float,
    batch_frames: int,
    seed: int,
    peak_lr: float = 2e-3,
    log=print,
) -> int:
    """CTC training with multi-look-ahead contexts drawn per batch; stops after ``minutes``."""
    rng = random.Random(seed)
    order = sorted(range(len(features)), key=lambda i: features[i].shape[1])
    batches, current, widest = [], [], 0
    for index in order:
        widest = max(widest, features[index].shape[1])
        if current and widest * (len(current) + 1) > batch_frames:
            batches.append(current)
            current, widest = [], features[index].shape[1]
        current.append(index)
    if current:
        batches.append(current)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=1e-3, betas=(0.9, 0.98))
    blank = model.config.vocab_size
    budget, begin, step = minutes * 60.0, time.time(), 0
    model.train()
    while time.time() - begin < budget:
        rng.shuffle(batches)
        for batch in batches:
            elapsed = (time.time() - begin) / budget
            if elapsed >= 1.0:
                break
            # Warm-up, hold, then cosine decay over the last 40 % of the time budget.
            decay = max(0.0, (elapsed - 0.6) / 0.4)
            lr = peak_lr * min(1.0, (step + 1) / 200) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * decay)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            lengths = torch.tensor([features[i].shape[1] for i in batch])
            padded = torch.zeros(len(batch), features[batch[0]].shape[0], int(lengths.max()))
            for row, i in enumerate(batch):
                padded[row, :, : lengths[row]] = features[i].float()
            padded = _spec_augment(padded, lengths, rng)
            context = rng.choices(CONTEXTS, weights=(0.4, 0.2, 0.2, 0.2))[0]
            encoded, encoded_len = model.encoder(padded, lengths, context)
            log_probs = model.ctc_head(encoded)
            flat = torch.tensor([t for i in batch for t in targets[i]], dtype=torch.long)
            target_len = torch.tensor([len(targets[i]) for i in batch])
            loss = F.ctc_loss(log_probs.transpose(0, 1), flat, encoded_len, target_len, blank=blank,
                              zero_infinity=True)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            if step % 50 == 0:
                log(f"step {step} t={time.time() - begin:.0f}s lr={lr:.2e} ctx={list(context)} loss={loss.item():.3f}")
            step += 1
    model.eval()
    return step


def evaluate(operator: StreamingASR, audio: Sequence[np.ndarray], texts: Sequence[str], batch: int = 32):
    """WER of offline and streaming transcription, plus whether the two outputs are identical."""
    offline, streaming = [], []
    for start in range(0, len(audio), batch):
        chunk = list(audio[start : start + batch])
        offline.extend(operator.transcribe(chunk, streaming=False))
        streaming.extend(operator.transcribe(chunk, streaming=True))
    return word_error_rate(texts, offline), word_error_rate(texts, streaming), offline == streaming


def held_out_wer(operator: StreamingASR, test_set: Sequence[Tuple[np.ndarray, str, str]], name: str) -> dict:
    """WER offline and streaming at every look-ahead, as report entries ``<name>_<left>_<right>``."""
    audio, texts = [a for a, _, _ in test_set], [t for _, t, _ in test_set]
    report = {}
    for context in CONTEXTS:
        wer_offline, wer_streaming, identical = evaluate(operator.with_context(context), audio, texts, batch=8)
        report[f"{name}_{context[0]}_{context[1]}"] = {
            "offline": wer_offline, "streaming": wer_streaming, "identical_transcripts": identical}
        print(f"{name} at {list(context)}: offline {wer_offline:.4f} streaming {wer_streaming:.4f} "
              f"(identical transcripts: {identical})")
    return report


DEFAULT_OUTPUT = os.path.join("out", "train-asr", "asr_default.nemo")


def output_paths(output: str, install_as_default: bool) -> List[str]:
    """Where the trained model goes: ``output``, then the shipped model when asked to replace it.

    The shipped model is never overwritten by accident: ``--output`` naming it needs the flag too.

    Raises:
        ConfigError: ``output`` is the shipped embedded model and ``install_as_default`` is false.
    """
    shipped = os.path.realpath(EMBEDDED_MODEL)
    if os.path.realpath(output) == shipped and not install_as_default:
        raise ConfigError(
            f"--output {output!r} is the shipped embedded model; add --install-as-default to replace it, "
            "or choose another --output"
        )
    return [output] + ([EMBEDDED_MODEL] if install_as_default and os.path.realpath(output) != shipped else [])


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None) -> dict:
    """Generates data, trains, evaluates on held-out voices and writes the ``.nemo`` model."""
    parser = argparse.ArgumentParser(prog="mediabeam train-asr", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"where to write the .nemo model ({DEFAULT_OUTPUT})")
    parser.add_argument("--install-as-default", action="store_true",
                        help="also replace the shipped embedded model operators/assets/asr_default.nemo")
    parser.add_argument("--num-train", type=int, default=6000, help="training utterances")
    parser.add_argument("--num-test", type=int, default=300, help="held-out-voice test utterances")
    parser.add_argument("--num-long-train", type=int, default=0,
                        help="extra long training utterances (%.0f-%.0f s digit strings, command sequences "
                             "and mixed lists)" % LONG_TRAIN_SECONDS)
    parser.add_argument("--num-long-test", type=int, default=20,
                        help="held-out-voice long test utterances (20-60 s digit strings and command sequences)")
    parser.add_argument("--train-minutes", type=float, default=20.0, help="training time budget")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for this small model on a shared machine)")
    parser.add_argument("--workers", type=int, default=2, help="parallel espeak-ng synthesis processes")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-frames", type=int, default=12000, help="mel frames per batch (padded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="keep the synthesised audio here between runs")
    parser.add_argument("--subsampling-channels", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--init-from", default=None,
                        help="continue training a .nemo model made by this job (keeps its tokenizer and shape)")
    parser.add_argument("--report", default=None, help="optional JSON report path")
    args = parser.parse_args(argv)
    destinations = output_paths(args.output, args.install_as_default)
    if subprocess.run(["which", "espeak-ng"], capture_output=True).returncode != 0:
        raise ConfigError("espeak-ng is not installed; run `apt-get install -y espeak-ng` first")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    began = time.time()
    train_set = _cached(args.cache_dir, f"train-{args.num_train}-{args.seed}",
                        lambda: generate(args.num_train, TRAIN_VARIANTS, args.seed, args.workers))
    test_set = _cached(args.cache_dir, f"test-{args.num_test}-{args.seed}",
                       lambda: generate(args.num_test, HELD_OUT_VARIANTS, args.seed + 1, args.workers))
    if args.num_long_train:
        train_set = train_set + _cached(
            args.cache_dir, f"train-long-{args.num_long_train}-{args.seed}",
            lambda: generate_long(args.num_long_train, TRAIN_VARIANTS, args.seed + 2, args.workers,
                                  LONG_TRAIN_SECONDS, (DIGITS, COMMANDS, WORDS)))
    long_test_set = _cached(args.cache_dir, f"test-long-{args.num_long_test}-{args.seed}",
                            lambda: long_test_set_of(args.num_long_test, args.seed + 1, args.workers))
    print(f"synthesised {len(train_set)} train / {len(test_set)} held-out / {len(long_test_set)} long held-out "
          f"utterances in {time.time() - began:.0f}s")
    if args.init_from:
        members = read_nemo_archive(args.init_from)
        tokenizer_bytes = next(data for name, data in members.items() if name.endswith("_tokenizer.model"))
        operator = load_nemo(args.init_from)
        model, vocabulary = operator.model, operator.vocabulary
    else:
        tokenizer_bytes = train_tokenizer([" ".join(WORDS)] * 4 + [text for _, text, _ in train_set], 64)
        vocabulary = SentencePieceVocabulary(tokenizer_bytes)
        config = ModelConfig(
            encoder=EncoderConfig(
                n_layers=args.layers, d_model=args.d_model, n_heads=4,
                subsampling_conv_channels=args.subsampling_channels, att_context_size=CONTEXTS,
            ),
            vocab_size=vocabulary.size,
        )
        model = FastConformerASR(config)
        init_weights(model)
        operator = StreamingASR(model, vocabulary)
    features = []
    for start in range(0, len(train_set), 256):
        feats, frames = operator.features([audio for audio, _, _ in train_set[start : start + 256]])
        features.extend(feats[row, :, : frames[row]].half() for row in range(feats.shape[0]))
    targets = [vocabulary.encode(text) for _, text, _ in train_set]
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f} M parameters, vocabulary {vocabulary.size}")
    steps = train(model, features, targets, args.train_minutes, args.batch_frames, args.seed, args.lr)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_nemo(args.output, model, tokenizer_model=tokenizer_bytes, weight_dtype=torch.float16)
    for target in destinations[1:]:  # the shipped model, with --install-as-default
        temporary = f"{target}.tmp-{os.getpid()}"
        shutil.copyfile(args.output, temporary)
        os.replace(temporary, target)
        print(f"replaced the shipped embedded model {target}")
    shipped = load_nemo(args.output)
    report = {"parameters": params, "train_steps": steps, "train_minutes": args.train_minutes,
              "init_from": args.init_from, "train_utterances": len(train_set),
              "test_utterances": len(test_set), "held_out_variants": HELD_OUT_VARIANTS,
              "model_bytes": os.path.getsize(args.output)}
    report.update(held_out_wer(shipped, test_set, "wer"))
    report.update(held_out_wer(shipped, long_test_set, "long_wer"))
    report["total_seconds"] = round(time.time() - began, 1)
    print(json.dumps(report))
    if args.report:
        with open(args.report, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


def main(argv: Optional[Sequence[str]] = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
