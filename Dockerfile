# nanovoice: the Discord bot in one small image.
#   docker build -t nanovoice .
#   docker run -d --name nanovoice --env-file .env -v nanovoice-data:/app/data nanovoice
# or `docker compose up -d` with compose.yaml. `docker run --rm --env-file .env nanovoice nanovoice check`
# diagnoses the setup (token, key, permissions, ffmpeg, database).
# Pinned by Debian codename, so a rebuild does not move to a new Debian release silently.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns the data directory; the bot never runs as root.
RUN groupadd --system --gid 10001 nanovoice \
 && useradd --system --uid 10001 --gid nanovoice --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin nanovoice

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes, not on every
# code change. The list is read from pyproject.toml itself (tomllib is in Python 3.11), so it is never
# copied by hand. Dependencies come as wheels; ffmpeg comes inside imageio-ffmpeg.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt \
 && python -c "import imageio_ffmpeg, subprocess; subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-version'], check=True, capture_output=True)"

# Then the code: the project itself without dependencies (they are installed above), then drop the
# sources so only the installed package is importable.
COPY README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install --no-deps . \
 && rm -rf /src

WORKDIR /app
RUN mkdir -p /app/data && chown nanovoice:nanovoice /app/data
USER nanovoice

# The SQLite database (voices, jobs, ledger, cached speech) lives on a volume.
ENV DATABASE_PATH=/app/data/nanovoice.sqlite3
VOLUME ["/app/data"]
# The bot's own HTTP server (stored Qwen embeddings, /healthz); started only when PUBLIC_BASE_URL is set.
EXPOSE 8080

# With PUBLIC_BASE_URL set: GET /healthz (the bot answers and its database works). Without it there is
# no server to ask, so it checks that the database exists and answers; a crashed bot ends the container.
HEALTHCHECK --interval=60s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "bot.doctor", "health"]

# SIGINT lets the bot close cleanly (cogs, gateway, database); Python as PID 1 ignores SIGTERM.
STOPSIGNAL SIGINT
CMD ["nanovoice", "run"]
