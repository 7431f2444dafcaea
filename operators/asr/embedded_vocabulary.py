"""The words the embedded ASR model (``operators/assets/asr_default.nemo``) was trained on.

``mediabeam train-asr`` synthesises its training speech from these words only, so the model
can say nothing else: any other speech comes out as the nearest of them. Jobs print the list
(``transcribe --help``, the run summary) so nobody mistakes it for a general recogniser.
"""

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COMMANDS = [
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "start", "pause", "play", "next", "back", "open", "close", "louder", "quieter", "help",
]
WORDS = DIGITS + COMMANDS


def describe() -> str:
    """One line for help texts and summaries: how many words and which."""
    return (f"the embedded model knows only {len(WORDS)} English words (digits {DIGITS[0]}-{DIGITS[-1]} and "
            f"the commands {', '.join(COMMANDS)}); other speech comes out as the nearest of them")
