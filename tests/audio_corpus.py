"""Real encoded audio (and non-audio) files for tests and benchmarks, built with the bundled ffmpeg.

Nothing is checked in: each file is generated on first use from a synthetic speech-like signal
(a tone plus noise whose loudness swings and drops to near-silence every couple of seconds, so a
waveform is never flat) and cached in a directory for the rest of the session.

    from tests.audio_corpus import corpus, KINDS
    data = corpus("m4a", 12)            # bytes of a 12 s AAC-in-M4A with its index at the end

In pytest use the ``audio_corpus`` fixture from :mod:`tests.fixtures_audio` (session-scoped, cached
under pytest's tmp dir): ``audio_corpus("voice_ogg", 18)``.

Kinds (``seconds`` is ignored by the fixed-size ones marked *):

=====================  ======================================================================
``mp3``                CBR 128 kb/s MP3, 44.1 kHz mono
``mp3_vbr``            VBR MP3 (``-q:a 4``) with a Xing header
``mp3_vbr_noxing``     VBR MP3 without a Xing header (mutagen misreads its length)
``m4a``                AAC in M4A, index (moov) at the END (ffmpeg's default layout)
``m4a_faststart``      AAC in M4A, index at the start (``+faststart``)
``wav``                16-bit PCM WAV, 24 kHz mono
``voice_ogg``          OGG/Opus 48 kHz mono 32 kb/s, like a Discord voice message
``ogg_vorbis``         OGG/Vorbis
``aac``                raw ADTS AAC (``.aac``)
``flac``               FLAC
``webm``               WebM with Opus audio only
``mp4_video``          MP4 with H.264 video and AAC audio
``video_no_audio``     MP4 with H.264 video and no audio stream
``png`` *              a tiny PNG image (use it as a fake ``.mp3``)
``garbage`` *          64 KiB of random bytes (fixed seed)
``empty`` *            zero bytes
``truncated_mp3``      the first 10 % of the ``mp3`` of that length
``mp3_header_garbage`` the first 3 KB of the ``mp3`` of that length, then random bytes
=====================  ======================================================================
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["EXTENSIONS", "KINDS", "AudioCorpus", "corpus", "ffmpeg"]

#: Kind → file extension (what a user's upload would be called).
EXTENSIONS: dict[str, str] = {
    "mp3": "mp3",
    "mp3_vbr": "mp3",
    "mp3_vbr_noxing": "mp3",
    "m4a": "m4a",
    "m4a_faststart": "m4a",
    "wav": "wav",
    "voice_ogg": "ogg",
    "ogg_vorbis": "ogg",
    "aac": "aac",
    "flac": "flac",
    "webm": "webm",
    "mp4_video": "mp4",
    "video_no_audio": "mp4",
    "png": "mp3",  # an image renamed .mp3
    "garbage": "mp3",
    "empty": "mp3",
    "truncated_mp3": "mp3",
    "mp3_header_garbage": "mp3",
}
KINDS = tuple(EXTENSIONS)
_FIXED = {"png", "garbage", "empty"}

# Encoder arguments for kinds that are a plain re-encode of the base signal.
_AUDIO_ENCODERS: dict[str, list[str]] = {
    "mp3": ["-ar", "44100", "-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"],
    "mp3_vbr": ["-ar", "44100", "-c:a", "libmp3lame", "-q:a", "4", "-f", "mp3"],
    "mp3_vbr_noxing": ["-ar", "44100", "-c:a", "libmp3lame", "-q:a", "4", "-write_xing", "0", "-f", "mp3"],
    "m4a": ["-c:a", "aac", "-b:a", "64k", "-f", "ipod"],
    "m4a_faststart": ["-c:a", "aac", "-b:a", "64k", "-movflags", "+faststart", "-f", "ipod"],
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "voice_ogg": ["-ar", "48000", "-c:a", "libopus", "-b:a", "32k", "-application", "voip", "-f", "ogg"],
    "ogg_vorbis": ["-c:a", "libvorbis", "-q:a", "2", "-f", "ogg"],
    "aac": ["-c:a", "aac", "-b:a", "64k", "-f", "adts"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "webm": ["-ar", "48000", "-c:a", "libopus", "-b:a", "32k", "-f", "webm"],
}

_ffmpeg_exe: str | None = None


def ffmpeg() -> str:
    """The bundled ffmpeg (the same binary the bot uses)."""
    global _ffmpeg_exe
    if _ffmpeg_exe is None:
        import imageio_ffmpeg

        _ffmpeg_exe = imageio_ffmpeg.get_ffmpeg_exe()
    return _ffmpeg_exe


def _run(*args: str) -> None:
    subprocess.run(
        [ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _seconds_tag(seconds: float) -> str:
    return f"{seconds:g}".replace(".", "_")


class AudioCorpus:
    """Generates corpus files on demand into ``directory`` and caches them (thread-safe)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    def __call__(self, kind: str, seconds: float = 12) -> bytes:
        return self.path(kind, seconds).read_bytes()

    def bytes(self, kind: str, seconds: float = 12) -> bytes:
        return self(kind, seconds)

    def filename(self, kind: str, seconds: float = 12) -> str:
        """A user-style upload name, e.g. ``upload-12s.m4a`` (``png`` gives a ``.mp3`` name)."""
        return f"upload-{_seconds_tag(seconds)}s.{EXTENSIONS[kind]}"

    def path(self, kind: str, seconds: float = 12) -> Path:
        if kind not in EXTENSIONS:
            raise KeyError(f"unknown corpus kind {kind!r}; choose from {', '.join(KINDS)}")
        name = kind if kind in _FIXED else f"{kind}-{_seconds_tag(seconds)}s"
        target = self.directory / f"{name}.{EXTENSIONS[kind]}"
        with self._lock:
            if not target.exists():
                tmp = target.with_name(f".tmp-{target.name}")
                self._build(kind, seconds, tmp)
                tmp.replace(target)
        return target

    # -- builders --------------------------------------------------------------------------------

    def _base(self, seconds: float) -> Path:
        """24 kHz mono WAV of speech-like sound: tone + noise, loudness swinging, short pauses."""
        target = self.directory / f"base-{_seconds_tag(seconds)}s.wav"
        if not target.exists():
            tmp = target.with_name(f".tmp-{target.name}")
            _run(
                "-f", "lavfi", "-i", f"sine=f=180:r=24000:d={seconds}",
                "-f", "lavfi", "-i", f"anoisesrc=r=24000:a=0.15:c=pink:seed=7:d={seconds}",
                "-filter_complex",
                "[0][1]amix=inputs=2:normalize=0,"
                "volume='0.15+0.85*abs(sin(2*PI*0.37*t))*(0.05+0.95*gte(mod(t,2.3),0.4))':eval=frame,"
                "volume=0.6",
                "-ac", "1", "-c:a", "pcm_s16le", "-f", "wav", str(tmp),
            )  # fmt: skip
            tmp.replace(target)
        return target

    def _build(self, kind: str, seconds: float, out: Path) -> None:
        if kind in _AUDIO_ENCODERS:
            _run("-i", str(self._base(seconds)), "-ac", "1", *_AUDIO_ENCODERS[kind], str(out))
        elif kind == "mp4_video":
            _run(
                "-f", "lavfi", "-i", f"color=c=navy:s=64x64:r=5:d={seconds}",
                "-i", str(self._base(seconds)),
                "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-b:a", "64k", "-shortest", "-f", "mp4", str(out),
            )  # fmt: skip
        elif kind == "video_no_audio":
            _run(
                "-f", "lavfi", "-i", f"color=c=navy:s=64x64:r=5:d={seconds}",
                "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-an", "-f", "mp4", str(out),
            )  # fmt: skip
        elif kind == "png":
            _run("-f", "lavfi", "-i", "color=c=red:s=8x8:d=1", "-frames:v", "1", "-c:v", "png", "-f", "image2",
                 str(out))  # fmt: skip
        elif kind == "garbage":
            out.write_bytes(random.Random(1234).randbytes(64 * 1024))
        elif kind == "empty":
            out.write_bytes(b"")
        elif kind == "truncated_mp3":
            full = self.path("mp3", seconds).read_bytes()
            out.write_bytes(full[: len(full) // 10])
        elif kind == "mp3_header_garbage":
            full = self.path("mp3", seconds).read_bytes()
            noise = random.Random(99).randbytes(max(len(full) - 3000, 4096))
            out.write_bytes(full[:3000] + noise)
        else:  # pragma: no cover - EXTENSIONS and the builders are kept in step
            raise KeyError(kind)


_default: AudioCorpus | None = None
_default_lock = threading.Lock()


def default_corpus() -> AudioCorpus:
    """A process-wide corpus in a temp directory removed at exit (for scripts and benchmarks)."""
    global _default
    with _default_lock:
        if _default is None:
            directory = tempfile.mkdtemp(prefix="nanovoice-audio-corpus-")
            atexit.register(shutil.rmtree, directory, True)
            _default = AudioCorpus(directory)
        return _default


def corpus(kind: str, seconds: float = 12) -> bytes:
    """Bytes of one corpus file, from the process-wide :func:`default_corpus`."""
    return default_corpus()(kind, seconds)
