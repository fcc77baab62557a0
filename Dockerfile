# One image for every process of docker-compose.yml: web, worker, beat, flower (and migrate).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/app/data \
    DJANGO_STATIC_ROOT=/app/static

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY messages ./messages
COPY core ./core
COPY worker ./worker
COPY manage.py ./
RUN pip install .

# The admin's CSS and JS, hashed and compressed, served by gunicorn through WhiteNoise. Throwaway
# settings only for this step, so no secret key or database file is baked into the image.
RUN DJANGO_SECRET_KEY=collectstatic-only DATABASE_URL=sqlite:// \
    CELERY_BROKER_URL=memory:// python manage.py collectstatic --noinput --verbosity 0

# Never run as root; DATA_DIR is the only place the app writes to.
RUN useradd --system --uid 10001 --no-create-home --home-dir /app app \
    && mkdir -p /app/data \
    && chown app /app/data
USER app

EXPOSE 8000 5555
CMD ["gunicorn", "messages.wsgi", "--bind", "0.0.0.0:8000", "--access-logfile", "-"]
