# nanovoice: the Discord bot in one small image.
#   docker build -t nanovoice .
#   docker run -d --name nanovoice --env-file .env -v nanovoice-data:/app/data nanovoice
# or `docker compose up -d` with compose.yaml. `docker run --rm --env-file .env nanovoice nanovoice check`
# diagnoses the setup (token, key, permissions, ffmpeg, database).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns the data directory; the bot never runs as root.
RUN groupadd --system --gid 10001 nanovoice \
 && useradd --system --uid 10001 --gid nanovoice --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin nanovoice

# Install the project itself (dependencies come as wheels, ffmpeg comes inside imageio-ffmpeg),
# then drop the sources so only the installed package is importable.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install . \
 && python -c "import imageio_ffmpeg, subprocess; subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-version'], check=True, capture_output=True)" \
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
