package runner_test

import (
	"testing"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/internal/testbin"
)

func cacheDigest(b []byte) string { return cache.DigestOf(b).Hash }

func pluginsDir(t *testing.T) string { return testbin.Build(t, "testplugins/go") }
