"""Smart Turn's input: the last 8 s of 16 kHz audio, zero-padded at the start, as pipecat does
(`LocalSmartTurnAnalyzerV3._predict_endpoint`), through pipecat's vendored Whisper log-mel
front end (`features_pipecat.py`, a verbatim copy of pipecat 1.14.0's `_whisper_features.py`)."""
import numpy as np

from features_pipecat import compute_whisper_log_mel_features

SAMPLES = 16000 * 8


def log_mel(audio):
    audio = np.asarray(audio, np.float32)
    if audio.size > SAMPLES:
        audio = audio[-SAMPLES:]
    elif audio.size < SAMPLES:
        audio = np.pad(audio, (SAMPLES - audio.size, 0))
    return compute_whisper_log_mel_features(audio, do_normalize=True)
