"""bot.audio over real encoded files (tests/audio_corpus.py), with the bundled ffmpeg."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import stat
import struct
import tempfile
import time
from pathlib import Path

import mutagen.mp3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import audio
from bot.errors import UserFacingError
from tests.audio_corpus import AudioCorpus

pytest_plugins = ["tests.fixtures_audio"]

GOOD_KINDS = [
    "mp3",
    "mp3_vbr",
    "mp3_vbr_noxing",
    "m4a",
    "m4a_faststart",
    "wav",
    "voice_ogg",
    "ogg_vorbis",
    "aac",
    "flac",
    "webm",
    "mp4_video",
]
TOLERANCE_S = 0.3


def assert_one_sentence(message: str) -> None:
    """A user-facing message: one sentence, no internals, and it says what to do."""
    assert message == message.strip() and "\n" not in message, message
    assert message[0].isupper() and message.endswith("."), message
    # Sentence ends are ". " / "! " / "? " or the end; decimals like "6.2" do not count.
    assert len(re.findall(r"[.!?](?:\s|$)", message)) == 1, message
    for leak in ("Traceback", "ffmpeg", "Error", "errno", "pipe:", "/tmp", "0x"):
        assert leak not in message, message
    assert re.search(r"\b(please|try|choose|send)\b", message, re.IGNORECASE), f"says nothing to change: {message}"
    assert len(message) < 200, message


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make bot.audio put its temp files in an empty directory we can inspect afterwards."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def mp3_info(data: bytes) -> mutagen.mp3.MPEGInfo:
    return mutagen.mp3.MP3(io.BytesIO(data)).info


# -- normalisation: good files ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", GOOD_KINDS)
async def test_every_common_format_normalises_for_minimax(audio_corpus: AudioCorpus, kind: str, workdir: Path) -> None:
    data = audio_corpus(kind, 12)
    result = await audio.normalize_clone_audio(data, "minimax", filename=audio_corpus.filename(kind, 12))

    assert abs(result.source_duration - 12) <= TOLERANCE_S
    assert abs(result.duration - 12) <= TOLERANCE_S
    assert not result.trimmed
    assert (result.filename, result.content_type) == ("voice.mp3", "audio/mpeg")
    info = mp3_info(result.mp3)
    assert (info.channels, info.sample_rate, info.bitrate) == (1, 44100, 128000)
    # The duration we report is the MP3's own, and agrees with its size at 128 kb/s.
    assert abs(len(result.mp3) * 8 / 128000 - result.duration) < 0.1
    assert leftovers(workdir) == [], "temp files left behind"


@pytest.mark.parametrize("kind", ["voice_ogg", "m4a", "aac", "webm"])
async def test_common_formats_normalise_for_qwen(audio_corpus: AudioCorpus, kind: str) -> None:
    result = await audio.normalize_clone_audio(audio_corpus(kind, 18), "qwen", filename=audio_corpus.filename(kind, 18))
    assert abs(result.duration - 18) <= TOLERANCE_S
    assert not result.trimmed


def _top_level_atoms(data: bytes) -> list[str]:
    atoms, pos = [], 0
    while pos + 8 <= len(data):
        size, name = struct.unpack(">I4s", data[pos : pos + 8])
        atoms.append(name.decode("latin-1"))
        if size < 8:
            break
        pos += size
    return atoms


async def test_m4a_with_index_at_the_end_normalises(audio_corpus: AudioCorpus) -> None:
    data = audio_corpus("m4a", 12)
    atoms = _top_level_atoms(data)
    assert atoms.index("moov") > atoms.index("mdat"), atoms  # really the stdin-hostile layout
    assert _top_level_atoms(audio_corpus("m4a_faststart", 12)).index("moov") < atoms.index("mdat")

    result = await audio.normalize_clone_audio(data, "minimax", filename="memo.m4a")
    assert abs(result.duration - 12) <= TOLERANCE_S


async def test_vbr_mp3_without_xing_uses_the_decoded_duration(audio_corpus: AudioCorpus) -> None:
    result = await audio.normalize_clone_audio(audio_corpus("mp3_vbr_noxing", 12), "minimax")
    assert abs(result.duration - 12) <= TOLERANCE_S


# -- normalisation: duration rules -----------------------------------------------------------------


async def test_minimax_rejects_five_seconds(audio_corpus: AudioCorpus) -> None:
    with pytest.raises(audio.AudioError) as caught:
        await audio.normalize_clone_audio(audio_corpus("voice_ogg", 5), "minimax", filename="voice-message.ogg")
    message = str(caught.value)
    assert_one_sentence(message)
    assert "5 seconds" in message and "MiniMax" in message and "10 seconds" in message


async def test_minimax_rejects_over_five_minutes_instead_of_cutting(audio_corpus: AudioCorpus) -> None:
    with pytest.raises(audio.AudioError) as caught:
        await audio.normalize_clone_audio(audio_corpus("mp3", 310), "minimax", filename="long.mp3")
    message = str(caught.value)
    assert_one_sentence(message)
    assert "5 minutes 10 seconds" in message and "at most 5 minutes" in message


async def test_qwen_accepts_five_seconds(audio_corpus: AudioCorpus) -> None:
    result = await audio.normalize_clone_audio(audio_corpus("voice_ogg", 5), "qwen")
    assert abs(result.duration - 5) <= TOLERANCE_S and not result.trimmed


async def test_qwen_trims_a_minute_to_thirty_seconds(audio_corpus: AudioCorpus) -> None:
    result = await audio.normalize_clone_audio(audio_corpus("mp3", 60), "qwen", filename="minute.mp3")
    assert result.trimmed
    assert abs(result.duration - 30) <= TOLERANCE_S
    assert abs(result.source_duration - 60) <= TOLERANCE_S
    assert abs(mp3_info(result.mp3).length - 30) <= TOLERANCE_S


async def test_qwen_rejects_two_seconds(audio_corpus: AudioCorpus) -> None:
    with pytest.raises(audio.AudioError) as caught:
        await audio.normalize_clone_audio(audio_corpus("mp3", 2), "qwen")
    assert_one_sentence(str(caught.value))
    assert "2 seconds" in str(caught.value) and "3 seconds" in str(caught.value)


async def test_qwen_rejects_over_five_minutes(audio_corpus: AudioCorpus) -> None:
    with pytest.raises(audio.AudioError) as caught:
        await audio.normalize_clone_audio(audio_corpus("mp3", 310), "qwen")
    assert_one_sentence(str(caught.value))
    assert "5 minutes" in str(caught.value)


async def test_unknown_provider_is_a_programming_error(audio_corpus: AudioCorpus) -> None:
    with pytest.raises(ValueError):
        await audio.normalize_clone_audio(audio_corpus("mp3", 12), "elevenlabs")


# -- normalisation: bad files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("png", "PNG image"),
        ("garbage", "not audio I can read"),
        ("empty", "empty"),
        ("truncated_mp3", "1.2 seconds"),  # 10 % of 12 s decodes to 1.2 s: too short, and said so
        ("mp3_header_garbage", "not audio I can read"),
        ("video_no_audio", "video has no audio track"),
    ],
)
async def test_bad_uploads_are_rejected_with_one_sentence(
    audio_corpus: AudioCorpus, kind: str, expected: str, workdir: Path
) -> None:
    with pytest.raises(audio.AudioError) as caught:
        await audio.normalize_clone_audio(audio_corpus(kind, 12), "minimax", filename=audio_corpus.filename(kind, 12))
    assert isinstance(caught.value, UserFacingError)
    assert_one_sentence(str(caught.value))
    assert expected in str(caught.value)
    assert leftovers(workdir) == [], "temp files left behind"


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"<!DOCTYPE html><html><body>hi</body></html>", "web page"),
        (b"just some notes about my voice\n" * 10, "text"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200), "JPEG"),
        (b"%PDF-1.7\n" + bytes(200), "PDF"),
        (b"PK\x03\x04" + bytes(200), "ZIP"),
        (b"GIF89a" + bytes(200), "GIF"),
    ],
)
def test_precheck_rejects_obvious_non_audio(data: bytes, what: str) -> None:
    with pytest.raises(audio.AudioError) as caught:
        audio.precheck(data, "clip.mp3")
    assert_one_sentence(str(caught.value))
    assert what in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "container"),
    [
        ("mp3", "mp3"),
        ("mp3_vbr_noxing", "mp3"),
        ("m4a", "m4a"),
        ("wav", "wav"),
        ("voice_ogg", "ogg/opus"),
        ("ogg_vorbis", "ogg/vorbis"),
        ("aac", "aac"),  # mutagen cannot read ADTS from bytes: must still pass
        ("flac", "flac"),
        ("webm", "webm"),  # mutagen cannot read WebM at all: must still pass
        ("mp4_video", "mp4"),
    ],
)
def test_precheck_names_real_containers(audio_corpus: AudioCorpus, kind: str, container: str) -> None:
    assert audio.precheck(audio_corpus(kind, 5), audio_corpus.filename(kind, 5)) == container


def test_precheck_leaves_unknown_binary_to_ffmpeg(audio_corpus: AudioCorpus) -> None:
    assert audio.precheck(audio_corpus("garbage"), "x.mp3") is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_precheck_only_ever_raises_audio_errors(data: bytes) -> None:
    try:
        audio.precheck(data, "fuzz.bin")
    except audio.AudioError as exc:
        assert_one_sentence(str(exc))


# -- sizes -----------------------------------------------------------------------------------------


def test_check_size() -> None:
    audio.check_size(5 * 1024 * 1024, None)
    audio.check_size(audio.MAX_UPLOAD_BYTES, 100 * 1024 * 1024)
    with pytest.raises(audio.AudioError) as caught:
        audio.check_size(0, None)
    assert "empty" in str(caught.value)
    assert_one_sentence(str(caught.value))

    with pytest.raises(audio.AudioError) as caught:
        audio.check_size(round(31.4 * 1024 * 1024), None)
    assert str(caught.value).startswith("That file is 31.4 MB; the limit is 20 MB")
    assert_one_sentence(str(caught.value))

    with pytest.raises(audio.AudioError) as caught:  # the interaction's upload limit is lower
        audio.check_size(12 * 1024 * 1024, 10 * 1024 * 1024)
    assert "the limit is 10 MB" in str(caught.value)


# -- hangs and timeouts ----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


async def test_a_hung_ffmpeg_is_killed_at_the_timeout(
    audio_corpus: AudioCorpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    await _hung_ffmpeg_is_killed(audio_corpus, tmp_path, monkeypatch, workdir)


def test_a_hung_ffmpeg_is_killed_at_the_timeout_on_uvloop(
    audio_corpus: AudioCorpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    """The bot runs on uvloop, whose subprocesses take other options: the same guarantee holds there."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(_hung_ffmpeg_is_killed(audio_corpus, tmp_path, monkeypatch, workdir))


async def _hung_ffmpeg_is_killed(
    audio_corpus: AudioCorpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    pids = tmp_path / "pids"
    fake = tmp_path / "ffmpeg"
    fake.write_text(f'#!/bin/sh\necho $$ > "{pids}"\nsleep 60 &\necho $! >> "{pids}"\nwait\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(audio, "_ffmpeg_path", str(fake))
    data = audio_corpus("mp3", 12)

    started = time.monotonic()
    with pytest.raises(audio.AudioError) as caught:
        await audio.normalize_clone_audio(data, "minimax", timeout=1.0)
    elapsed = time.monotonic() - started

    assert elapsed < 2.0, elapsed
    assert "took too long" in str(caught.value)
    assert_one_sentence(str(caught.value))
    started_pids = [int(line) for line in pids.read_text().split()]
    assert len(started_pids) == 2
    for _ in range(50):  # the orphaned child may take a moment to be reaped
        if not any(_alive(pid) for pid in started_pids):
            break
        await asyncio.sleep(0.02)
    assert not any(_alive(pid) for pid in started_pids), "ffmpeg (or its children) survived the timeout"
    assert leftovers(workdir) == [], "temp files left behind"


async def test_a_cancelled_normalisation_kills_ffmpeg(audio_corpus: AudioCorpus, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    pids = tmp_path / "pids"
    fake = tmp_path / "ffmpeg"
    fake.write_text(f'#!/bin/sh\necho $$ > "{pids}"\nexec sleep 60\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(audio, "_ffmpeg_path", str(fake))
    task = asyncio.create_task(audio.normalize_clone_audio(audio_corpus("mp3", 12), "minimax", timeout=30))
    for _ in range(100):
        if pids.exists() and pids.read_text().strip():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(int(pids.read_text()))


# -- voice messages --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mp3", "wav", "ogg_vorbis", "aac", "flac"])
async def test_voice_message_encoding(audio_corpus: AudioCorpus, kind: str, workdir: Path) -> None:
    result = await audio.encode_voice_message(audio_corpus(kind, 12))

    assert result.ogg.startswith(b"OggS")
    head = result.ogg.index(b"OpusHead")
    assert result.ogg[head + 9] == 1  # mono
    assert abs(result.duration - 12) <= 0.15
    waveform = base64.b64decode(result.waveform_b64, validate=True)
    assert len(waveform) == round(result.duration * 10)
    assert max(waveform) == 255
    assert len(set(waveform)) > 10, "a flat waveform looks like a fake voice message"
    assert leftovers(workdir) == [], "temp files left behind"


async def test_voice_message_round_trips_as_audio(audio_corpus: AudioCorpus) -> None:
    message = await audio.encode_voice_message(audio_corpus("mp3", 5))
    again = await audio.normalize_clone_audio(message.ogg, "qwen", filename="voice-message.ogg")
    assert abs(again.duration - 5) <= TOLERANCE_S


async def test_voice_message_rejects_non_audio(audio_corpus: AudioCorpus) -> None:
    for data in (b"", audio_corpus("garbage")):
        with pytest.raises(audio.AudioError) as caught:
            await audio.encode_voice_message(data)
        assert_one_sentence(str(caught.value))


def _pcm(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def test_waveform_rules() -> None:
    silence = audio.compute_waveform(_pcm([0] * 8000), 1.0)
    assert silence == bytes(10)

    ramp = audio.compute_waveform(_pcm([(i // 800) * 1000 * (-1) ** i for i in range(8000)]), 1.0)
    assert len(ramp) == 10 and ramp[-1] == 255 and list(ramp) == sorted(ramp)

    steady = audio.compute_waveform(_pcm([8000 * (-1) ** i for i in range(16000)]), 2.0)
    assert len(steady) == 20 and max(steady) == 255 and len(set(steady)) > 1  # never a flat line

    assert len(audio.compute_waveform(_pcm([100] * 8000 * 40), 40.0)) == 256  # clamped
    assert len(audio.compute_waveform(_pcm([100] * 80), 0.01)) == 1


# -- event loop ------------------------------------------------------------------------------------


async def test_event_loop_stays_responsive_during_a_minute_of_transcoding(audio_corpus: AudioCorpus) -> None:
    data = audio_corpus("voice_ogg", 60)  # built before we start measuring
    await audio.ffmpeg_exe()
    lag = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal lag
        interval = 0.005
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(interval)
            lag = max(lag, time.perf_counter() - before - interval)

    tick = asyncio.create_task(ticker())
    try:
        result = await audio.normalize_clone_audio(data, "minimax", filename="minute.ogg")
        message = await audio.encode_voice_message(result.mp3)
    finally:
        stop.set()
        await tick
    assert abs(result.duration - 60) <= TOLERANCE_S and abs(message.duration - 60) <= 0.15
    assert lag < 0.100, f"event loop blocked for {lag * 1000:.0f} ms"


# -- helpers ---------------------------------------------------------------------------------------


def test_format_duration() -> None:
    assert audio.format_duration(6.2) == "6.2 seconds"
    assert audio.format_duration(10) == "10 seconds"
    assert audio.format_duration(1) == "1 second"
    assert audio.format_duration(300) == "5 minutes"
    assert audio.format_duration(310.2) == "5 minutes 10 seconds"
    assert audio.format_duration(61) == "1 minute 1 second"


async def test_ffmpeg_is_resolved_once_through_imageio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio, "_ffmpeg_path", None)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", "/opt/ffmpeg/bin/ffmpeg")
    assert await audio.ffmpeg_exe() == "/opt/ffmpeg/bin/ffmpeg"
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", "/elsewhere/ffmpeg")
    assert await audio.ffmpeg_exe() == "/opt/ffmpeg/bin/ffmpeg"
