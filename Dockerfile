# call-me in one image: the lock server (the default command), the CLI and the GitHub Action's
# entry points (console scripts of the package).
#
#   docker build -t call-me .                      # root: what GitHub builds for the Action
#   docker run -e PORT=8000 -e API_KEY=... -p 8000:8000 -v call-me:/data call-me
#   docker build --target server -t call-me-server .   # runs as the unprivileged user callme
#
# The default (last) stage keeps root: GitHub runs a Docker action's container as root and
# forbids USER in its Dockerfile, or the mounted workspace would not be writable. The server
# does not need root: use the `server` target, or `docker run --user 10001` on this image.

# Pinned by tag: CPython 3.11 on Debian 12. Not by digest: where no registry is reachable,
# scripts/podman-setup makes a local stand-in of this image under a name of its own, which the
# tests pass as --build-arg BASE_IMAGE=...; everyone else builds on the official image.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS app

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Dependencies first, in their own layer, so that a change of the code alone rebuilds offline.
# They are read from pyproject.toml (runtime dependencies and the build backend).
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
print(*p['project']['dependencies'], *p['build-system']['requires'], sep='\n')" > /tmp/requirements.txt \
    && pip install --no-cache-dir --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY LICENSE README.md* ./
COPY server/ server/
COPY action/ action/
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf /src/build /src/*.egg-info

# The SQLite database goes to /data (mount a volume there). Any user may write to it, as
# with /tmp, so that `--user` with any uid works too.
RUN mkdir -p /data && chmod 1777 /data
WORKDIR /data
ENV PORT=8000 \
    CALL_ME_HOST=0.0.0.0 \
    CALL_ME_DATABASE=/data/call-me.db
EXPOSE 8000
CMD ["call-me-server"]


FROM app AS server
RUN groupadd --system --gid 10001 callme \
    && useradd --system --uid 10001 --gid callme --home-dir /data --no-create-home --shell /usr/sbin/nologin callme \
    && chown callme:callme /data \
    && chmod 0750 /data
USER 10001:10001
VOLUME ["/data"]


# The default target, last: root, for the GitHub Action.
FROM app AS action
