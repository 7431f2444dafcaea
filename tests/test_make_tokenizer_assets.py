"""pipelines.tools.make_tokenizer_assets: the progress lines of the (long) asset fit."""

import io
import re
import time

from pipelines.tools.make_tokenizer_assets import StageProgress


def _run_stages(stages, sleeps, interval_s=0.05):
    stream = io.StringIO()
    progress = StageProgress(stages, interval_s, stream)
    for index, seconds in enumerate(sleeps):
        with progress.stage(index):
            time.sleep(seconds)
    assert stream.getvalue().splitlines() == progress.lines
    return progress.lines


def test_stage_progress_names_each_stage_with_elapsed_time_and_an_eta():
    lines = _run_stages([("write media", 0.0), ("fit audio", 60.0), ("fit images", 30.0)], [0.0, 0.2, 0.0])
    assert lines[0] == "make-tokenizer-assets: [1/3] write media, stage 0:00:00, total 0:00:00, ETA ~0:01:30"
    fit_audio = [line for line in lines if "[2/3] fit audio" in line]
    assert len(fit_audio) >= 2, lines  # the start line plus at least one heartbeat
    assert all(re.search(r"ETA ~0:01:(30|29)$", line) for line in fit_audio), fit_audio
    # the audio stage ran ~300x faster than estimated, so the image stage's ETA shrinks with it
    assert [line for line in lines if "[3/3] fit images" in line][0].endswith("ETA ~0:00:00")
    assert lines[-1].startswith("make-tokenizer-assets: done in 0:00:0")


def test_a_stage_past_its_estimate_says_so_instead_of_a_made_up_eta():
    lines = _run_stages([("fit audio", 0.05), ("fit images", 40.0)], [0.25, 0.0])
    late = [line for line in lines if "[1/2] fit audio" in line and "past this stage's estimate" in line]
    assert late and late[-1].endswith("then ~0:00:40"), lines
