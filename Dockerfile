# One image for every process of docker-compose.yml: web, the interactive and bulk workers,
# beat, flower (and migrate).
# Python 3.11, the one CI runs the whole suite on (.ci/run); pyproject.toml accepts 3.11 to 3.13.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/app/data \
    DJANGO_STATIC_ROOT=/app/static

WORKDIR /app

# Dependencies first, from the lock file alone, so a code change does not reinstall them. The
# lock pins the whole tree with hashes (build dependencies included): the same versions on
# every build. Regenerate it with `make lock` after changing pyproject.toml's dependencies.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# Then the project itself, its dependencies already there.
COPY pyproject.toml README.md manage.py ./
COPY messages ./messages
COPY core ./core
COPY worker ./worker
RUN pip install --no-deps --no-build-isolation . && pip check

# The admin's CSS and JS, hashed and compressed, served by gunicorn through WhiteNoise. Throwaway
# settings only for this step, so no secret key or database file is baked into the image.
RUN DJANGO_SECRET_KEY=collectstatic-only DATABASE_URL=sqlite:// \
    CELERY_BROKER_URL=memory:// python manage.py collectstatic --noinput --verbosity 0

# Never run as root; DATA_DIR is the only place the app writes to.
RUN useradd --system --uid 10001 --no-create-home --home-dir /app app \
    && mkdir -p /app/data/metrics \
    && chown app /app/data /app/data/metrics
USER app

EXPOSE 8000 5555
CMD ["gunicorn", "messages.wsgi", "--bind", "0.0.0.0:8000", "--access-logfile", "-", "--logger-class", "messages.access_log.AccessLogger"]
