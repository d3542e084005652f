// Command remote measures REAPI CAS throughput against a plain loopback
// copy of the same bytes: a blob in a memfd is uploaded (ByteStream Write,
// pread from the memfd) and downloaded (ByteStream Read into a new memfd,
// pwrite, SHA-256 checked, sealed), and the same bytes are sent over one
// TCP connection on 127.0.0.1 with the same chunk size (pread → write on one
// side, read → pwrite on the other). Each round alternates the three;
// medians are printed as a Markdown table. scripts/bench-remote.sh starts the
// servers and runs it.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/remote"
	"github.com/pipehost/pipehost/internal/units"
	"github.com/pipehost/pipehost/shm"
)

func main() {
	targets := flag.String("targets", "", "comma-separated NAME=grpc://HOST:PORT servers")
	sizeFlag := flag.String("size", "1GiB", "blob size")
	rounds := flag.Int("rounds", 5, "rounds (the median is reported)")
	chunk := flag.Int("chunk", 1<<20, "ByteStream and loopback chunk size in bytes")
	executor := flag.String("executor", "", "REAPI executor (grpc://HOST:PORT) for the per-stage overhead; empty skips it")
	platform := flag.String("platform", "", "the executor's worker platform, NAME=VALUE,...")
	runnerBin := flag.String("runner", "", "the pipehost-stage binary")
	pluginDir := flag.String("plugins", "", "directory holding the ref-go plugin")
	flag.Parse()
	if *executor != "" {
		if err := stageOverhead(*executor, *platform, *runnerBin, *pluginDir, *rounds); err != nil {
			fail(err)
		}
	}
	size, err := units.ParseBytes(*sizeFlag)
	if err != nil {
		fail(err)
	}
	if *targets == "" {
		fail(fmt.Errorf("-targets is required"))
	}
	seg, err := shm.Create("bench-blob", size)
	if err != nil {
		fail(err)
	}
	defer seg.Close()
	// The blob stays writable (a new one each round), so it is hashed
	// through this mapping rather than as a sealed segment.
	m, err := seg.MapRW()
	if err != nil {
		fail(err)
	}
	defer m.Unmap()
	blob := m.Bytes()
	fill(blob)

	type server struct {
		name string
		c    *remote.Client
	}
	var servers []server
	for _, t := range strings.Split(*targets, ",") {
		name, target, ok := strings.Cut(t, "=")
		if !ok {
			fail(fmt.Errorf("target %q: want NAME=grpc://HOST:PORT", t))
		}
		c, err := remote.Dial(context.Background(), target, remote.Options{ChunkSize: *chunk, StallTimeout: time.Minute})
		if err != nil {
			fail(err)
		}
		defer c.Close()
		servers = append(servers, server{name, c})
	}

	times := map[string][]time.Duration{}
	var hashTimes []time.Duration
	for r := 0; r < *rounds; r++ {
		// A new blob each round, so no server already holds it.
		binary.LittleEndian.PutUint64(blob, uint64(time.Now().UnixNano()))
		t0 := time.Now()
		d := cache.DigestOf(blob)
		hashTimes = append(hashTimes, time.Since(t0))

		el, err := loopback(seg, *chunk)
		if err != nil {
			fail(err)
		}
		times["loopback"] = append(times["loopback"], el)
		for _, s := range servers {
			t0 := time.Now()
			sent, err := s.c.Upload(context.Background(), []remote.Blob{{Digest: d, Src: remote.SegmentReader(seg)}})
			if err != nil {
				fail(err)
			}
			if sent != size {
				fail(fmt.Errorf("%s: uploaded %d bytes, want %d", s.name, sent, size))
			}
			times[s.name+" upload"] = append(times[s.name+" upload"], time.Since(t0))
			t0 = time.Now()
			got, err := s.c.Download(context.Background(), d, "bench-dl")
			if err != nil {
				fail(err)
			}
			times[s.name+" download"] = append(times[s.name+" download"], time.Since(t0))
			got.Close()
		}
		fmt.Fprintf(os.Stderr, "round %d/%d done\n", r+1, *rounds)
	}
	loop := median(times["loopback"])
	fmt.Printf("%s blob, %s chunks, median of %d rounds\n\n", units.Bytes(size), units.Bytes(int64(*chunk)), *rounds)
	fmt.Println("| transfer | median | throughput | time / loopback copy |")
	fmt.Println("|---|---:|---:|---:|")
	row := func(name string, t time.Duration) {
		fmt.Printf("| %s | %s | %.0f MiB/s | %.1f× |\n", name, t.Round(time.Millisecond), float64(size)/(1<<20)/t.Seconds(), t.Seconds()/loop.Seconds())
	}
	row("loopback TCP copy, memfd → memfd", loop)
	for _, s := range servers {
		row(s.name+" upload (ByteStream Write from a memfd)", median(times[s.name+" upload"]))
		row(s.name+" download (ByteStream Read into a sealed memfd, SHA-256 checked)", median(times[s.name+" download"]))
	}
	row("SHA-256 of the blob alone (no transfer)", median(hashTimes))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench remote:", err)
	os.Exit(1)
}

func median(ts []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// fill writes pseudo-random bytes (SHA-256 counter blocks, not compressible).
func fill(b []byte) {
	var ctr [8]byte
	for i := 0; i < len(b); i += 32 {
		binary.LittleEndian.PutUint64(ctr[:], uint64(i))
		sum := sha256.Sum256(ctr[:])
		copy(b[i:], sum[:])
	}
}

// loopback sends the segment over a TCP connection on 127.0.0.1 into a new
// memfd, chunk by chunk, and returns the time until the receiver has all of
// it.
func loopback(seg *shm.Segment, chunk int) (time.Duration, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	size := seg.Size()
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		conn, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		dst, err := shm.Create("bench-loop", size)
		if err != nil {
			done <- err
			return
		}
		defer dst.Close()
		buf := make([]byte, chunk)
		done <- dst.Use(func(fd int) error {
			var off int64
			for off < size {
				n, err := io.ReadFull(conn, buf[:min(int64(chunk), size-off)])
				if err != nil {
					return err
				}
				if _, err := unix.Pwrite(fd, buf[:n], off); err != nil {
					return err
				}
				off += int64(n)
			}
			return nil
		})
	}()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	src := remote.SegmentReader(seg)
	buf := make([]byte, chunk)
	for off := int64(0); off < size; {
		n := int(min(int64(chunk), size-off))
		if _, err := src.ReadAt(buf[:n], off); err != nil {
			return 0, err
		}
		if _, err := conn.Write(buf[:n]); err != nil {
			return 0, err
		}
		off += int64(n)
	}
	if err := <-done; err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
