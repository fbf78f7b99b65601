# A small image of `causeway`: the release binary on distroless (glibc, libgcc, CA
# certificates, a nonroot user; no shell, no package manager).
#
#   docker build -t causeway .
#   docker run --rm causeway --version
#
# The binary links only libc, libm and libgcc_s (see `ldd`), which the distroless "cc"
# image provides; the test `deploy::image_binary_runs_with_only_its_libraries` runs it in
# an empty chroot holding just those files.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p causeway \
    && strip target/release/causeway \
    && ./target/release/causeway --version

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/causeway /usr/local/bin/causeway
# MLLP and the admin API (health, readiness, metrics).
EXPOSE 2575 8080
USER nonroot
ENTRYPOINT ["/usr/local/bin/causeway"]
CMD ["serve", "--config", "/etc/causeway/causeway.toml"]
