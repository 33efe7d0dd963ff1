"""Audio for nanovoice: validate and normalise clone uploads, encode Discord voice messages.

Nothing here knows about Discord. Every decode runs in the static ffmpeg shipped by imageio-ffmpeg
as an asyncio subprocess with a hard timeout (killed on hang); file I/O and the waveform run in a
worker thread, so the event loop never blocks. The traps behind each step:

* header durations lie (VBR without Xing, truncated files, header + garbage), so the duration that
  counts is the *decoded* one: the number of PCM samples ffmpeg produced, cross-checked against
  the CBR MP3 we send on;
* an M4A with its index at the end fed through stdin decodes to nothing, so uploads go to a temp
  file;
* exit code 0 is not success: the output must be non-empty and long enough.

Every :class:`AudioError` is a single sentence telling the user what to change.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import io
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import weakref
from dataclasses import dataclass
from typing import Any

from bot import providers
from bot.errors import UserFacingError
from bot.providers.base import MP3_UPLOAD, DurationRule

log = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_UPLOAD_BYTES",
    "AudioError",
    "DurationRule",
    "NormalizedAudio",
    "VoiceMessageAudio",
    "check_size",
    "encode_voice_message",
    "normalize_clone_audio",
    "precheck",
    "provider_rule",
]

# -- rules -----------------------------------------------------------------------------------------


def provider_rule(provider: str) -> DurationRule | None:
    """The clip rule of ``provider`` from :mod:`bot.providers` (read at call time: one source)."""
    described = providers.find(provider)
    return described.rule if described is not None else None


MAX_UPLOAD_BYTES = 20 * 1024 * 1024
ACCEPTED_FORMATS = "MP3, M4A, WAV, OGG, FLAC, AAC or WebM"

#: A source may run this much past ``max_s`` (container rounding, encoder padding) and is then cut
#: to ``max_s`` instead of being rejected.
LENGTH_TOLERANCE_S = 0.5
#: Decoding to less than this is "not audio" (a header followed by garbage decodes to ~0.1 s).
MIN_READABLE_S = 0.25

CLONE_BITRATE = MP3_UPLOAD.bitrate  # what both providers' uploads use (bot.providers.base.UploadFormat)
CLONE_SAMPLE_RATE = MP3_UPLOAD.sample_rate
PROBE_RATE = 8_000  # u8 mono PCM used only to count decoded seconds
WAVEFORM_RATE = 8_000  # s16le mono PCM used for the voice-message waveform
MAX_WAVEFORM_BUCKETS = 256

#: Demuxers ffmpeg may use on an upload. Keeps hostile "audio" (HLS/concat playlists that fetch
#: URLs or local files, image sequences, ...) away from the decoder. ``mov`` covers mp4/m4a/3gp,
#: ``matroska`` covers webm, ``aac`` is ADTS.
_DEMUXERS = "mp3,wav,ogg,flac,mov,matroska,aac,aiff,asf,caf,amr,wv"
_INPUT_GUARD = ["-format_whitelist", _DEMUXERS, "-protocol_whitelist", "file"]
_STDERR_TAIL = 4096


# -- errors ----------------------------------------------------------------------------------------


class AudioError(UserFacingError):
    """The audio cannot be used; ``str()`` is one sentence telling the user what to change."""


class UnreadableAudio(AudioError):
    """The data is not audio ffmpeg can decode."""


class NoAudioTrack(AudioError):
    """The container decodes but has no audio stream."""


class BadDuration(AudioError):
    """The decoded clip is too short or too long for the provider."""

    def __init__(self, message: str, *, duration: float) -> None:
        super().__init__(message)
        self.duration = duration


class AudioTooLarge(AudioError):
    """The upload is over the size limit."""


class AudioTimeout(AudioError):
    """ffmpeg did not finish in time and was killed."""


def _unreadable() -> UnreadableAudio:
    return UnreadableAudio(f"That file is not audio I can read; please upload an {ACCEPTED_FORMATS} recording.")


def _timeout_error() -> AudioTimeout:
    return AudioTimeout("That file took too long to process; try a shorter or simpler recording.")


def _format_mb(size: int) -> str:
    mb = size / (1024 * 1024)
    return f"{mb:.0f} MB" if mb.is_integer() else f"{mb:.1f} MB"


def format_duration(seconds: float) -> str:
    """``6.2 seconds``, ``1 minute 5 seconds``, ``5 minutes``: for messages to the user."""
    if seconds < 60:
        value = f"{seconds:.1f}".removesuffix(".0")
        return f"{value} second" if value == "1" else f"{value} seconds"
    minutes, secs = divmod(round(seconds), 60)
    text = f"{minutes} minute" + ("s" if minutes != 1 else "")
    if secs:
        text += f" {secs} second" + ("s" if secs != 1 else "")
    return text


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NormalizedAudio:
    """A clone upload ready for NanoGPT: mono 44.1 kHz CBR 128 kb/s MP3.

    ``duration`` is the length of ``mp3``; ``source_duration`` the decoded length of the upload
    (capped a little past the provider maximum); ``trimmed`` says the MP3 is a cut of the upload.
    """

    mp3: bytes
    duration: float
    source_duration: float
    trimmed: bool
    filename: str = "voice.mp3"
    content_type: str = "audio/mpeg"


@dataclass(frozen=True, slots=True)
class VoiceMessageAudio:
    """A Discord voice message: OGG/Opus mono 48 kHz, its duration and base64 waveform."""

    ogg: bytes
    duration: float
    waveform_b64: str


# -- cheap checks (before / without ffmpeg) --------------------------------------------------------


def check_size(size: int, upload_limit: int | None) -> None:
    """Reject an attachment by its announced size, before downloading it.

    The limit is :data:`MAX_UPLOAD_BYTES` or the interaction's upload limit, whichever is lower.
    """
    if size <= 0:
        raise AudioError("That file is empty; please upload a recording with sound in it.")
    limit = MAX_UPLOAD_BYTES if not upload_limit or upload_limit <= 0 else min(MAX_UPLOAD_BYTES, upload_limit)
    if size > limit:
        raise AudioTooLarge(
            f"That file is {_format_mb(size)}; the limit is {_format_mb(limit)}, so please upload a shorter "
            "or more compressed recording."
        )


_NOT_AUDIO_MAGIC: tuple[tuple[bytes, str | None], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"PK\x05\x06", "a ZIP archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "a program"),
    (b"MZ", "a program"),
    (b"BM", None),  # BMP: too short a magic to trust alone; checked below
)


def _id3_end(data: bytes) -> int:
    """Offset after a leading ID3v2 tag (synchsafe size, optional footer)."""
    size = 0
    for b in data[6:10]:
        size = (size << 7) | (b & 0x7F)
    footer = 10 if len(data) > 5 and data[5] & 0x10 else 0
    return 10 + size + footer


def _sniff(data: bytes, depth: int = 0) -> str | None:
    """Name the audio container from its magic bytes, or None if not recognised."""
    head = data[:64]
    if head.startswith(b"ID3") and len(head) >= 10:
        inner = _sniff(data[_id3_end(data) :], depth + 1) if depth < 2 else None
        return inner or "mp3"
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        if b"OpusHead" in data[:512]:
            return "ogg/opus"
        if b"\x01vorbis" in data[:512]:
            return "ogg/vorbis"
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "m4a" if brand in (b"M4A ", b"M4B ", b"M4P ") else "mp4"
    if head[4:8] in (b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in data[:64] else "matroska"
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"
    if head.startswith(b"caff"):
        return "caf"
    if head.startswith(b"#!AMR"):
        return "amr"
    if head.startswith(b"wvpk"):
        return "wavpack"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF0 == 0xF0 and head[1] & 0x06 == 0:
        return "aac"  # ADTS: 12-bit sync, layer bits 00
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0:
        return "mp3"  # MPEG audio frame sync with a real layer
    return None


def _looks_like_text(data: bytes) -> bool:
    sample = data[:1024]
    if not sample or b"\x00" in sample:
        return False
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:  # a multi-byte char cut at the end is still text
            return False
        text = sample[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(len(text), 1)


def precheck(data: bytes, filename: str | None = None) -> str | None:
    """Cheap header sniff of an upload, before ffmpeg.

    Returns the detected container (``"mp3"``, ``"m4a"``, ``"ogg/opus"``, ...), or ``None`` when the
    header is not recognised but might still be audio (ffmpeg decides). Raises :class:`AudioError`
    for an empty file and for files that are clearly something else (images, documents, archives,
    text or HTML).
    """
    if not data:
        raise AudioError("That file is empty; please upload a recording with sound in it.")
    kind = _sniff(data)
    if kind is not None:
        return kind
    for magic, what in _NOT_AUDIO_MAGIC:
        if data.startswith(magic) and what is not None:
            raise UnreadableAudio(f"That file is {what}, not audio; please upload an {ACCEPTED_FORMATS} recording.")
    if data.startswith(b"BM") and len(data) > 14 and int.from_bytes(data[2:6], "little") == len(data):
        raise UnreadableAudio(f"That file is a BMP image, not audio; please upload an {ACCEPTED_FORMATS} recording.")
    if _looks_like_text(data):
        stripped = data[:512].lstrip().lower()
        what = "a web page" if stripped.startswith((b"<!doctype html", b"<html")) else "text"
        raise UnreadableAudio(f"That file is {what}, not audio; please upload an {ACCEPTED_FORMATS} recording.")
    log.debug("precheck: unrecognised header %r for %r; leaving it to ffmpeg", data[:12], filename)
    return None


# -- ffmpeg plumbing -------------------------------------------------------------------------------

_ffmpeg_path: str | None = None
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
#: At most this many ffmpeg processes per event loop; the rest queue (their timeout starts when they run).
MAX_CONCURRENT_FFMPEG = max(2, os.cpu_count() or 2)
#: ffmpeg runs this much "nicer" than the bot (0 disables), so the event loop keeps its CPU share.
FFMPEG_NICENESS = 10


async def ffmpeg_exe() -> str:
    """The ffmpeg binary (``imageio_ffmpeg.get_ffmpeg_exe()``, honouring ``IMAGEIO_FFMPEG_EXE``), resolved once."""
    global _ffmpeg_path
    if _ffmpeg_path is None:
        import imageio_ffmpeg  # runs `ffmpeg -version` once to validate: keep it off the loop

        found: str = await asyncio.to_thread(imageio_ffmpeg.get_ffmpeg_exe)  # the package ships no types
        _ffmpeg_path = found
        log.info("using ffmpeg at %s", _ffmpeg_path)
    return _ffmpeg_path


def _slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = _slots.get(loop)
    if sem is None:
        sem = _slots[loop] = asyncio.Semaphore(MAX_CONCURRENT_FFMPEG)
    return sem


def ffmpeg_slot() -> asyncio.Semaphore:
    """The one cap on ffmpeg processes of this event loop, for ffmpeg runs started elsewhere (voice playback)."""
    return _slot()


def sniff(data: bytes) -> str | None:
    """The audio container named from its magic bytes (``"mp3"``, ``"ogg/opus"``, …), or None."""
    return _sniff(data)


def playback_input_args() -> list[str]:
    """ffmpeg input options for synthesised speech piped on stdin: the same demuxer whitelist as every
    other decode here, and no protocol but the pipe."""
    return ["-format_whitelist", _DEMUXERS, "-protocol_whitelist", "pipe,fd"]  # ffmpeg 6+ reads "-" as fd:


@dataclass(frozen=True, slots=True)
class _Run:
    returncode: int
    stdout: bytes
    stderr: str


async def _drain(stream: asyncio.StreamReader, *, limit: int | None) -> tuple[bytes, bool]:
    """Read a stream to EOF; with ``limit`` keep only the last ``limit`` bytes. Returns (data, overflowed)."""
    chunks = bytearray()
    overflowed = False
    while block := await stream.read(65536):
        chunks += block
        if limit is not None and len(chunks) > limit:
            del chunks[: len(chunks) - limit]
            overflowed = True
    return bytes(chunks), overflowed


async def _run_ffmpeg(args: list[str], *, deadline_s: float) -> _Run:
    """Run ffmpeg with ``args``; kill it (and raise :class:`AudioTimeout`) after ``deadline_s`` seconds."""
    exe = await ffmpeg_exe()
    async with _slot():
        proc = await asyncio.create_subprocess_exec(
            exe,
            "-nostdin",
            "-hide_banner",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            **_process_group_kwargs(),
        )
        assert proc.stdout is not None and proc.stderr is not None
        _lower_priority(proc.pid)
        try:
            async with asyncio.timeout(deadline_s):
                (out, _), (err, _), returncode = await asyncio.gather(
                    _drain(proc.stdout, limit=None), _drain(proc.stderr, limit=_STDERR_TAIL), proc.wait()
                )
        except TimeoutError:
            log.warning("ffmpeg (pid %s) ran past %.1f s; killed", proc.pid, deadline_s)
            raise _timeout_error() from None
        finally:
            if proc.returncode is None:
                _kill(proc)
                # Reap it even if we are being cancelled, so no zombie is left behind.
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
    return _Run(returncode, out, err.decode("utf-8", "replace"))


def _lower_priority(pid: int) -> None:
    """Let the bot's own process win the CPU: on a small box, transcodes must not starve the loop."""
    if FFMPEG_NICENESS and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, FFMPEG_NICENESS)


def _process_group_kwargs() -> dict[str, Any]:
    """Own process group (so a kill reaches anything ffmpeg started) but NOT a new session: with Linux
    scheduler autogroups a new session gets its own CPU share and `nice` stops working, which measured
    60–180 ms of loop lag with 4 transcodes on 2 cores. uvloop's subprocesses take no ``process_group``;
    there the child calls setpgrp itself (one system call, nothing that could wait on a lock)."""
    if sys.platform == "win32":  # pragma: no cover - the bot runs on Linux
        return {}
    if isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ffmpeg, and anything it started when it leads its own process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sys.platform != "win32" and os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _stderr_summary(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return " | ".join(lines[-4:])[:500]


class _Workdir:
    """A private temp directory, removed on exit (created and filled off the loop)."""

    def __init__(self) -> None:
        self.path = ""

    async def __aenter__(self) -> _Workdir:
        self.path = await asyncio.to_thread(tempfile.mkdtemp, prefix="nanovoice-audio-")
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Synchronous on purpose: a small directory, and it must run even when cancelled.
        shutil.rmtree(self.path, ignore_errors=True)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _read_if_exists(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return b""


def _input_name(filename: str | None, kind: str | None) -> str:
    """A safe temp-file name; the extension is only a hint for ffmpeg's probe."""
    ext = ""
    if filename and "." in filename:
        ext = filename.rsplit(".", 1)[1].lower()
    if not re.fullmatch(r"[a-z0-9]{1,5}", ext):
        ext = (kind or "bin").split("/", 1)[0]
    return f"input.{ext}"


async def _describe_no_audio(path: str, *, deadline_s: float) -> NoAudioTrack:
    """Tell a video without sound from any other file without an audio stream."""
    has_video = False
    try:
        run = await _run_ffmpeg(["-loglevel", "info", *_INPUT_GUARD, "-i", path], deadline_s=deadline_s)
        has_video = re.search(r"Stream #\d+:\d+.*: Video:", run.stderr) is not None
    except AudioTimeout:
        pass
    if has_video:
        return NoAudioTrack("That video has no audio track; please upload a recording with sound.")
    return NoAudioTrack("That file has no audio track; please upload a recording with sound.")


# -- clone uploads ---------------------------------------------------------------------------------


def _mp3_duration(mp3: bytes, bitrate: int = CLONE_BITRATE) -> float:
    """Duration of our CBR MP3 by mutagen, cross-checked against bytes × 8 / bitrate."""
    import mutagen.mp3

    by_size = len(mp3) * 8 / bitrate
    try:
        info = mutagen.mp3.MP3(io.BytesIO(mp3)).info
        if not isinstance(info, mutagen.mp3.MPEGInfo):  # mutagen declares FileType.info as None until loaded
            raise TypeError("mutagen found no MPEG stream information")
        length = float(info.length)
    except Exception:  # mutagen raises several types on odd data
        log.warning("mutagen could not read our own MP3 output (%d bytes); using its size", len(mp3))
        return by_size
    if abs(length - by_size) > 0.25 + 0.01 * by_size:
        log.warning("MP3 duration disagreement: mutagen %.3f s, size %.3f s", length, by_size)
    return length


def _header_duration(data: bytes) -> float | None:
    """The length a file's header claims (mutagen); may lie, so only used to word a message."""
    import mutagen

    try:
        parsed = mutagen.File(io.BytesIO(data))
    except Exception:  # mutagen raises several types on odd data
        return None
    if parsed is None or parsed.info is None:  # tagless files are falsy: test `is None`
        return None
    length = getattr(parsed.info, "length", None)
    return float(length) if isinstance(length, int | float) and math.isfinite(length) and length > 0 else None


async def normalize_clone_audio(
    data: bytes,
    provider: str,
    *,
    filename: str | None = None,
    timeout: float = 60,  # noqa: ASYNC109 - a kill deadline for ffmpeg, not a cancellation scope
) -> NormalizedAudio:
    """Turn an upload into a mono 44.1 kHz 128 kb/s MP3 that ``provider`` accepts.

    Checks the header, decodes the whole upload (up to just past the provider maximum) to learn its
    real length, rejects it when too short or too long for the provider, and trims Qwen clips to
    their first 30 s. Raises :class:`AudioError` with one user-facing sentence on any problem.
    """
    described = providers.find(provider)
    if described is None:
        raise ValueError(f"unknown provider {provider!r}")
    rule, upload = described.rule, described.upload
    kind = precheck(data, filename)
    cap = rule.upload_s
    probe_limit = rule.max_s + 1  # decode just past the maximum to know whether it was exceeded

    async with _Workdir() as work:
        src = work.file(_input_name(filename, kind))
        pcm = work.file("decoded.u8")
        await asyncio.to_thread(_write, src, data)
        args = [
            "-loglevel", "error", *_INPUT_GUARD, "-i", src,
            # Output 1: what we upload.
            "-map", "0:a:0", "-vn", "-sn", "-dn", "-t", f"{cap:g}", "-ac", "1", "-ar", str(upload.sample_rate),
            "-c:a", "libmp3lame", "-b:a", f"{upload.bitrate // 1000}k", "-f", "mp3", "pipe:1",
            # Output 2: 8 kHz u8 PCM, one byte per decoded sample: the authoritative source length.
            "-map", "0:a:0", "-vn", "-sn", "-dn", "-t", f"{probe_limit:g}", "-ac", "1", "-ar", str(PROBE_RATE),
            "-c:a", "pcm_u8", "-f", "u8", "-y", pcm,
        ]  # fmt: skip
        run = await _run_ffmpeg(args, deadline_s=timeout)
        if run.returncode != 0:
            summary = _stderr_summary(run.stderr)
            log.info("ffmpeg rejected upload %r (%s, rc %d): %s", filename, kind, run.returncode, summary)
            if "matches no streams" in run.stderr or "does not contain any stream" in run.stderr:
                raise await _describe_no_audio(src, deadline_s=min(timeout, 10))
            raise _unreadable()
        decoded_bytes = await asyncio.to_thread(lambda: os.path.getsize(pcm) if os.path.exists(pcm) else 0)

    source_duration = decoded_bytes / PROBE_RATE
    mp3 = run.stdout
    if run.stderr.strip():
        log.debug("ffmpeg warnings for %r: %s", filename, _stderr_summary(run.stderr))
    if not mp3 or source_duration < MIN_READABLE_S:
        log.info("upload %r (%s) decoded to %.2f s / %d MP3 bytes", filename, kind, source_duration, len(mp3))
        raise _unreadable()

    name = described.label
    if source_duration > rule.max_s + LENGTH_TOLERANCE_S:
        # We decoded only just past the maximum; the header's claim is good enough for the message.
        claimed = await asyncio.to_thread(_header_duration, data)
        length = (
            f"{format_duration(claimed)} long"
            if claimed is not None and claimed > rule.max_s + LENGTH_TOLERANCE_S
            else f"longer than {format_duration(rule.max_s)}"
        )
        raise BadDuration(
            f"That clip is {length}; {name} accepts at most {format_duration(rule.max_s)}, "
            "so please upload a shorter recording.",
            duration=claimed if claimed is not None and claimed > source_duration else source_duration,
        )
    if source_duration < rule.min_s:
        raise BadDuration(
            f"That clip is {format_duration(source_duration)} long; {name} needs at least "
            f"{format_duration(rule.min_s)} of speech, so please upload a longer recording.",
            duration=source_duration,
        )

    duration = await asyncio.to_thread(_mp3_duration, mp3, upload.bitrate)
    expected = min(source_duration, cap)
    if abs(duration - expected) > 0.3:
        log.warning("MP3 output %.2f s vs decoded %.2f s for %r", duration, expected, filename)
    trimmed = source_duration > cap + 0.05
    log.info(
        "normalised %r (%s, %d bytes) for %s: %.2f s decoded → %.2f s MP3 (%d bytes)%s",
        filename, kind, len(data), provider, source_duration, duration, len(mp3), ", trimmed" if trimmed else "",
    )  # fmt: skip
    return NormalizedAudio(mp3=mp3, duration=duration, source_duration=source_duration, trimmed=trimmed)


# -- voice messages --------------------------------------------------------------------------------


def compute_waveform(pcm: bytes, duration: float) -> bytes:
    """Discord's waveform: one byte per 100 ms (1–256 buckets), RMS scaled so the loudest is 255.

    Pure Python (~8 ms for 10 s at 8 kHz): call it through ``asyncio.to_thread``. All-silent audio
    gives all zeros; a signal whose buckets come out identical falls back to peaks, then to a gentle
    envelope, because a flat line reads as a fake voice message.
    """
    samples = array.array("h")
    samples.frombytes(pcm[: len(pcm) - len(pcm) % 2])
    if sys.byteorder != "little":
        samples.byteswap()
    n = max(1, min(MAX_WAVEFORM_BUCKETS, round(duration * 10)))
    total = len(samples)
    if total == 0:
        return bytes(n)
    rms: list[float] = []
    peaks: list[int] = []
    for i in range(n):
        chunk = samples[i * total // n : (i + 1) * total // n]
        if not chunk:
            rms.append(0.0)
            peaks.append(0)
            continue
        rms.append(math.sqrt(sum(x * x for x in chunk) / len(chunk)))
        peaks.append(max(max(chunk), -min(chunk)))

    def scale(values: list[float]) -> list[int]:
        top = max(values)
        return [0] * n if top <= 0 else [min(255, round(v * 255 / top)) for v in values]

    wave = scale(rms)
    if n > 1 and len(set(wave)) == 1 and wave[0] > 0:
        wave = scale([float(p) for p in peaks])
        if len(set(wave)) == 1:
            # Constant loudness (a steady tone): a soft rise and fall, never a flat bar.
            wave = [round(255 * (0.6 + 0.4 * math.sin(math.pi * (i + 0.5) / n))) for i in range(n)]
    return bytes(wave)


async def encode_voice_message(
    audio: bytes,
    *,
    timeout: float = 30,  # noqa: ASYNC109 - a kill deadline for ffmpeg, not a cancellation scope
) -> VoiceMessageAudio:
    """Encode synthesised audio (MP3/WAV/OGG/AAC/FLAC) as a Discord voice message.

    One ffmpeg call writes OGG/Opus mono 48 kHz 48 kb/s (``-application voip``) to a temp file and
    8 kHz s16le PCM to stdout; the duration is the PCM sample count, the waveform is computed from
    it in a worker thread.
    """
    if not audio:
        raise AudioError("That audio is empty, so there is nothing to send as a voice message; try the request again.")
    kind = _sniff(audio)
    async with _Workdir() as work:
        src = work.file(f"input.{(kind or 'bin').split('/', 1)[0]}")
        ogg_path = work.file("voice-message.ogg")
        await asyncio.to_thread(_write, src, audio)
        args = [
            "-loglevel", "error", *_INPUT_GUARD, "-i", src,
            "-map", "0:a:0", "-vn", "-ac", "1", "-ar", "48000", "-c:a", "libopus", "-b:a", "48k",
            "-application", "voip", "-f", "ogg", "-y", ogg_path,
            "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(WAVEFORM_RATE), "-c:a", "pcm_s16le", "-f", "s16le", "pipe:1",
        ]  # fmt: skip
        run = await _run_ffmpeg(args, deadline_s=timeout)
        if run.returncode != 0:
            log.info("ffmpeg could not encode a voice message (rc %d): %s", run.returncode, _stderr_summary(run.stderr))
            raise AudioError("That audio could not be converted to a voice message; send it as a file instead.")
        ogg = await asyncio.to_thread(_read_if_exists, ogg_path)
    pcm = run.stdout
    duration = (len(pcm) // 2) / WAVEFORM_RATE
    if not ogg.startswith(b"OggS") or duration < 0.05:
        log.info("voice message came out empty: %d OGG bytes, %.3f s", len(ogg), duration)
        raise AudioError("That audio could not be converted to a voice message; send it as a file instead.")
    waveform = await asyncio.to_thread(compute_waveform, pcm, duration)
    log.debug("voice message: %.2f s, %d OGG bytes, %d waveform buckets", duration, len(ogg), len(waveform))
    return VoiceMessageAudio(ogg=ogg, duration=duration, waveform_b64=base64.b64encode(waveform).decode("ascii"))
