"""The ``audio_corpus`` fixture: real encoded audio files built once per session with the bundled ffmpeg.

Register with ``pytest_plugins = ["tests.fixtures_audio"]``. Use it as a callable:
``audio_corpus("m4a", 12)`` → bytes; ``audio_corpus.path(kind, seconds)`` → the cached file;
``audio_corpus.filename(kind, seconds)`` → an upload-style name. Kinds: :data:`tests.audio_corpus.KINDS`.
"""

from __future__ import annotations

import pytest

from tests.audio_corpus import AudioCorpus


@pytest.fixture(scope="session")
def audio_corpus(tmp_path_factory: pytest.TempPathFactory) -> AudioCorpus:
    return AudioCorpus(tmp_path_factory.mktemp("audio-corpus"))
