# pipehost — build, demo and test entry points. `make demo` and `make test` are the two
# commands a fresh machine needs; each installs what is missing and is quick otherwise.
SHELL := /bin/bash
GO ?= go
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(HOME)/.cargo/bin:$(PATH)
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

GO_PLUGINS := $(notdir $(wildcard plugins/go/*))
GO_TESTPLUGINS := $(notdir $(wildcard testplugins/go/*))

.PHONY: all build build-go build-cpp build-rust build-python build-remote demo test soak proto proto-check deps deps-go deps-sys fmt vet bench clean

all: build

deps: deps-sys deps-go

deps-sys:
	@scripts/ensure-deps.sh

deps-go:
	@$(GO) mod download

build: build-go build-cpp build-rust build-python

# Native SDKs and their plugins: CMake (Debian gRPC) and cargo (tonic).
build-cpp:
	@scripts/ensure-deps.sh cpp
	@scripts/build-cpp.sh

build-rust:
	@scripts/ensure-deps.sh rust
	@scripts/build-rust.sh

# The Python SDK into .tools/venv, and launchers of the Python plugins.
build-python:
	@scripts/build-python.sh

build-go: deps-go
	@mkdir -p bin/plugins bin/testplugins
	$(GO) build -o bin/pipehost ./cmd/pipehost
	$(GO) build -o bin/pipehost-stage ./cmd/pipehost-stage
	@for p in $(GO_PLUGINS); do $(GO) build -o bin/plugins/$$p ./plugins/go/$$p || exit 1; done
	@for p in $(GO_TESTPLUGINS); do $(GO) build -o bin/testplugins/$$p ./testplugins/go/$$p || exit 1; done

# The REAPI servers the scale-out tests run against (docs/scale-out.md).
build-remote:
	@scripts/build-remote-servers.sh

demo: deps build
	bin/pipehost run examples/planet.toml --out out --plugin-dir bin/plugins

test: deps build build-remote proto-check
	@scripts/test.sh

# 1,000 runs of a small pipeline with faults injected (or 10 minutes, whichever
# ends first); fds, processes, segments, sockets and cache bytes must not
# change. The figures go to out/soak.txt (docs/reliability.md quotes them).
soak: build-go
	@mkdir -p out
	PIPEHOST_SOAK=$${SOAK_RUNS:-1000} PIPEHOST_SOAK_TIME=$${SOAK_TIME:-10m} PIPEHOST_SOAK_REPORT=$(CURDIR)/out/soak.txt \
	  $(GO) test -count=1 -v -timeout 20m -run '^TestSoak$$' ./host/runner

proto: $(TOOLS)/bin/protoc-gen-go $(TOOLS)/bin/protoc-gen-go-grpc
	@scripts/ensure-deps.sh protoc
	protoc -I proto --go_out=proto --go_opt=module=github.com/pipehost/pipehost/proto \
	  --go-grpc_out=proto --go-grpc_opt=module=github.com/pipehost/pipehost/proto \
	  proto/pipehost/v1/stage.proto
	protoc -I proto --go_out=proto --go_opt=module=github.com/pipehost/pipehost/proto \
	  --go-grpc_out=proto --go-grpc_opt=module=github.com/pipehost/pipehost/proto \
	  proto/bench/v1/transfer.proto
	scripts/proto-python.sh

# Regenerates into a scratch copy and fails when the committed code differs.
proto-check: $(TOOLS)/bin/protoc-gen-go $(TOOLS)/bin/protoc-gen-go-grpc
	@scripts/proto-check.sh

$(TOOLS)/bin/protoc-gen-go:
	GOBIN=$(TOOLS)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(TOOLS)/bin/protoc-gen-go-grpc:
	GOBIN=$(TOOLS)/bin $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

bench: build
	@scripts/bench.sh

clean:
	rm -rf bin out
