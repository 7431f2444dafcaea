"""Hostile media payloads: manifests that pull in other local files, scripts that synthesise hours
of audio, and long payloads that would blow the media budgets.

Each crafted file is first shown to be a real attack (an unrestricted ffmpeg recognises it as the
demuxer in question), then refused by every decode entry point.
"""

import subprocess
import tracemalloc

import numpy as np
import pytest

from operators.media.audio import decode_audio
from operators.media.ffmpeg_io import PROTOCOL_WHITELIST, MediaBudgetExceeded, ffmpeg_binary
from operators.media.probe import probe
from operators.media.video import iter_video_frames
from operators.tokenizers.avc import AvcTokenizer
from operators.tokenizers.base import MediaError
from operators.tokenizers.opus import OpusTokenizer
from operators.tokenizers.semantic_audio import decode_first_channel
from pipelines.tools.make_samples import synthetic_video

SBG_99_HOURS = b"-SE\na: 440+10/50\nNOW a\n+99:00:00 a\n"


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """A local video (with audio) that no payload may pull into the output."""
    directory = tmp_path_factory.mktemp("secret")
    path = directory / "secret.mp4"
    path.write_bytes(synthetic_video(np.random.default_rng(5), with_audio=True))
    return path


def _dash(target: str) -> bytes:
    return (
        '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        'mediaPresentationDuration="PT1S" minBufferTime="PT1S" '
        'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011"><Period><AdaptationSet mimeType="video/mp4">'
        f'<Representation id="a" bandwidth="256000"><BaseURL>{target}</BaseURL></Representation>'
        "</AdaptationSet></Period></MPD>\n"
    ).encode()


def _imf() -> bytes:
    return (b'<?xml version="1.0"?>\n<CompositionPlaylist xmlns="http://www.smpte-ra.org/schemas/2067-3/2016">'
            b"<ContentTitle>x</ContentTitle><EditRate>24 1</EditRate><SegmentList/></CompositionPlaylist>\n")


def _crafted(secret, kind: str):
    """``(payload: bytes or path, what an unrestricted ffmpeg says about it)`` for one demuxer."""
    folder = secret.parent
    if kind == "dash-bytes":
        return _dash(f"file://{secret}"), "Input #0, dash"
    if kind in ("dash-path-wav", "dash-path-mkv"):
        path = folder / f"manifest.{kind[-3:]}"
        path.write_bytes(_dash("secret.mp4"))  # relative to the manifest
        return str(path), "Input #0, dash"
    if kind == "hls":
        path = folder / "list.m3u8"
        path.write_bytes(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile://{secret}\n#EXT-X-ENDLIST\n".encode())
        return str(path), "Input #0, hls"
    if kind in ("concat", "ffconcat"):
        path = folder / f"{kind}.wav"
        entries = b"file secret.mp4\n" * (2 if kind == "concat" else 1)
        path.write_bytes(b"ffconcat version 1.0\n" + entries)
        return str(path), "Input #0, concat"
    if kind == "imf":
        return _imf(), "IMF CPL"
    if kind == "sbg":
        return SBG_99_HOURS, "Input #0, sbg"
    if kind == "tty":
        path = folder / "notes.txt"
        path.write_bytes(b"hello world this is plain text\n" * 50)
        return str(path), "Input #0, tty"
    raise AssertionError(kind)


def _unrestricted(payload) -> str:
    """What ffmpeg restricted to file/pipe protocols but with every demuxer makes of a payload."""
    url = f"file:{payload}" if isinstance(payload, str) else "pipe:"
    args = [ffmpeg_binary(), "-hide_banner", "-protocol_whitelist", PROTOCOL_WHITELIST, "-i", url, "-t", "0.1",
            "-f", "null", "-"]
    proc = subprocess.run(args, input=payload if isinstance(payload, bytes) else None, capture_output=True)
    return proc.stderr.decode("utf-8", "replace")


KINDS = ["dash-bytes", "dash-path-wav", "dash-path-mkv", "hls", "concat", "ffconcat", "imf", "sbg", "tty"]
ENTRY_POINTS = {
    "decode_audio": lambda p: decode_audio(p),
    "first_channel": lambda p: decode_first_channel(p),
    "opus": lambda p: OpusTokenizer().encode(p),
    "video_frames": lambda p: list(iter_video_frames(p, 2, 16, 16)),
    "avc": lambda p: AvcTokenizer(seconds=1).encode(p),
    "probe": lambda p: probe(p),
}


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_file_is_a_real_attack_without_the_demuxer_whitelist(secret, kind):
    payload, recognised = _crafted(secret, kind)
    assert recognised in _unrestricted(payload)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("kind", KINDS)
def test_manifest_playlist_and_script_demuxers_are_refused(secret, kind, entry):
    payload, _ = _crafted(secret, kind)
    with pytest.raises(MediaError, match="refused: the payload's container is not an allowed"):
        ENTRY_POINTS[entry](payload)


def test_secret_is_decodable_so_refusals_are_not_vacuous(secret):
    assert decode_audio(str(secret)).size > 0
    assert len(list(iter_video_frames(str(secret), 2, 16, 16))) > 0


@pytest.mark.parametrize("url", ["concat:{s}|{s}", "subfile,,start,0,end,0,,:{s}", "data:video/mp4;base64,AAAA",
                                 "http://127.0.0.1:9/x.mp4"])
def test_protocols_inside_playlists_stay_refused(secret, tmp_path, url):
    path = tmp_path / "list.m3u8"
    path.write_bytes(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{url.format(s=secret)}\n#EXT-X-ENDLIST\n".encode())
    with pytest.raises(MediaError, match="refused"):
        decode_audio(str(path))


def test_protocol_names_in_paths_are_plain_files(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        decode_audio("http://127.0.0.1:9/x.wav")


def test_silent_two_hour_flac_is_refused_with_bounded_memory(tmp_path):
    path = tmp_path / "silence.flac"
    subprocess.run([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "anullsrc=r=8000:cl=mono", "-t", "7200", "-c:a", "flac", str(path)], check=True)
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    with pytest.raises(MediaBudgetExceeded, match="budget media_seconds=600 exceeded: the payload declares 7200.0 s"):
        decode_audio(path.read_bytes())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * 601 * 16000 * 4  # the capped ffmpeg output (38 MB), never the 2 h (460 MB)


def test_sbg_duration_is_capped_even_where_the_demuxer_is_allowed():
    with pytest.raises(MediaBudgetExceeded, match="budget media_seconds=2 exceeded: the payload declares 356400.0 s"):
        decode_audio(SBG_99_HOURS, sample_rate=8000, formats="sbg", media_seconds=2.0)
