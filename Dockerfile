# syntax=docker/dockerfile:1

# Modules are downloaded in their own layer so that source edits
# do not invalidate them.
FROM golang:1.26-bookworm AS source
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY . .

FROM source AS build
RUN --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags='-s -w' -o /out/order-management .

# Development-only OIDC token issuer, used by compose.yaml. Never deploy it.
FROM source AS build-devissuer
RUN --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags='-s -w' -o /out/devissuer ./cmd/devissuer

FROM gcr.io/distroless/static-debian12:nonroot AS devissuer
COPY --from=build-devissuer /out/devissuer /devissuer
USER nonroot:nonroot
ENTRYPOINT ["/devissuer"]

# The service image; the last stage is the default target (fly deploy, plain docker build).
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="order-management" \
      org.opencontainers.image.description="Customers, orders and phone-number inventory API with SMS and e-mail notifications"
COPY --from=build /out/order-management /order-management
USER nonroot:nonroot
ENV PORT=8080
# The deployments (fly.toml, the Helm chart, compose.prod.yaml) give the service 256 MiB; a soft
# limit below it makes the garbage collector work harder before the kernel's hard one is near.
# Change it with the memory.
ENV GOMEMLIMIT=200MiB
EXPOSE 8080
ENTRYPOINT ["/order-management"]
