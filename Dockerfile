# tollgate in a container: build with Rust, run from a minimal non-root image whose root filesystem
# may be read-only. The only writable place tollgate needs is /data (the SQLite file and its -wal
# and -shm; nothing at all on PostgreSQL), plus a tmpfs at /tmp for SQLite's temporary files.
#
#   docker build -t tollgate .
#   docker run --read-only --tmpfs /tmp -v tollgate-data:/data -p 8080:8080 --env-file tollgate.env tollgate
#
# See README.md "Running in a container" and RUNBOOK.md.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# What the build reads, and nothing else (.dockerignore allows only these): the migrations and
# assets/ are compiled into the binary, as is .env.example (the placeholder values refused in
# production).
COPY Cargo.toml Cargo.lock .env.example ./
COPY migrations ./migrations
COPY assets ./assets
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/tollgate /out/usr/local/bin/tollgate \
    && install -d -m 0700 /out/data

# glibc and libgcc (what a Rust binary links), CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/tollgate /usr/local/bin/tollgate
# /data belongs to the runtime user; a new named volume mounted there starts with this owner.
COPY --from=build --chown=65532:65532 /out/data /data
# The image is production unless told otherwise: it refuses to start on an unsafe configuration
# and lists every problem. Behind a proxy set TOLLGATE_TRUSTED_PROXIES, or give it a certificate.
# DATABASE_URL is left unset so that DATABASE_URL_FILE may be used: its default,
# sqlite://tollgate.db, is relative to the working directory, /data.
ENV TOLLGATE_ENV=production \
    TOLLGATE_BIND=0.0.0.0:8080 \
    TOLLGATE_LOG_FORMAT=json
WORKDIR /data
VOLUME ["/data"]
USER 65532:65532
EXPOSE 8080
# tollgate stops gracefully on SIGTERM: it stops accepting, lets requests in flight finish (up to
# TOLLGATE_SHUTDOWN_TIMEOUT, 20s by default; give `docker stop -t` more than that) and exits.
STOPSIGNAL SIGTERM
# Readiness of this instance (/readyz: the database answers, is migrated and takes a write), from the
# same configuration the server reads; no curl in the image. start-period covers the migrations.
HEALTHCHECK --interval=15s --timeout=15s --start-period=60s --retries=3 CMD ["tollgate", "healthcheck"]
ENTRYPOINT ["tollgate"]
CMD ["serve"]
