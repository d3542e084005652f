package pluginmgr

import (
	"context"
	"fmt"
	"runtime"
	"sync"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// DescribeStats says where Describe found each plugin's descriptors.
type DescribeStats struct {
	// FromCatalog counts plugins described by the catalog, not launched.
	FromCatalog int
	// Launched lists the plugins launched to be described.
	Launched []string
	// Ignored maps a plugin path to why its catalog entry was not used
	// (corrupt, foreign, another protocol revision).
	Ignored map[string]string
}

// Describe returns one Plugin per path, in order, each with its stage
// descriptors. A binary whose digest the catalog knows is not launched: its
// Plugin carries the remembered descriptors and no process (Running is
// false; Start launches it). The others are launched and described, their
// replies recorded in the catalog, and left running, since a stage may
// need them (StopUnused stops the rest). With a nil catalog every path is
// launched, as LaunchAll does. Errors are per path, like LaunchAll's.
func (m *Manager) Describe(ctx context.Context, paths []string, cat *Catalog) ([]*Plugin, DescribeStats, []error) {
	stats := DescribeStats{Ignored: map[string]string{}}
	if cat == nil {
		plugins, errs := m.LaunchAll(ctx, paths)
		stats.Launched = append(stats.Launched, paths...)
		return plugins, stats, errs
	}
	defer cat.Flush()
	type known struct {
		digest string
		stat   statRecord
	}
	// Hashing is the cold path's cost (tens of MB per binary): spread it
	// over the cores. A memo hit is one stat.
	ids := make([]known, len(paths))
	hashErrs := make([]error, len(paths))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, path := range paths {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			d, st, err := cat.digestStat(path)
			if err != nil {
				hashErrs[i] = &LaunchError{Path: path, Err: fmt.Errorf("hashing the plugin: %w", err)}
			}
			ids[i] = known{d, st}
		}()
	}
	wg.Wait()
	var errs []error
	for _, err := range hashErrs {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, stats, errs
	}
	out := make([]*Plugin, len(paths))
	var launch []string
	var launchAt []int
	for i, path := range paths {
		resp, why := cat.Lookup(ids[i].digest)
		if resp == nil {
			if why != "" {
				stats.Ignored[path] = why
			}
			launch = append(launch, path)
			launchAt = append(launchAt, i)
			continue
		}
		p := &Plugin{Path: path, SDK: resp.GetSdk(), SDKVersion: resp.GetSdkVersion(), Stages: resp.GetStages()}
		p.setDigest(ids[i].digest, ids[i].stat)
		out[i] = p
		stats.FromCatalog++
	}
	stats.Launched = launch
	launched, errs := m.launchIndexed(ctx, launch)
	if len(errs) > 0 {
		return nil, stats, errs
	}
	for j, p := range launched {
		i := launchAt[j]
		out[i] = p
		// Recorded only if the file is still the one hashed: a binary
		// replaced meanwhile may not be what was launched.
		if st, err := statOf(p.Path); err == nil && st.sameFile(ids[i].stat) {
			p.setDigest(ids[i].digest, ids[i].stat)
			cat.Record(ids[i].digest, describeReply(p))
		}
	}
	return out, stats, nil
}

// launchIndexed is LaunchAll keeping the order of paths.
func (m *Manager) launchIndexed(ctx context.Context, paths []string) ([]*Plugin, []error) {
	plugins := make([]*Plugin, len(paths))
	errs := make([]error, len(paths))
	done := make(chan struct{})
	for i, path := range paths {
		go func() {
			plugins[i], errs[i] = m.Launch(ctx, path)
			done <- struct{}{}
		}()
	}
	for range paths {
		<-done
	}
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	return plugins, failed
}

func describeReply(p *Plugin) *pb.DescribeResponse {
	return &pb.DescribeResponse{Stages: p.Stages, Sdk: p.SDK, SdkVersion: p.SDKVersion}
}

// Start returns a running process for a plugin Describe returned: p itself
// when it was launched to be described, else a new launch. changed reports
// that the running binary does not describe itself as the catalog said (it
// was replaced or rebuilt since it was hashed); the catalog then holds the
// new descriptors, and the caller must plan again with live's.
func (m *Manager) Start(ctx context.Context, p *Plugin, cat *Catalog) (live *Plugin, changed bool, err error) {
	if p.Running() {
		return p, false, nil
	}
	live, err = m.launchKnown(ctx, p.Path, func(live *Plugin) {
		// The binary the catalog hashed, describing itself as remembered.
		if cat != nil && sameDescriptors(p, live) {
			if st, err := statOf(p.Path); err == nil && st.sameFile(p.stat) {
				live.setDigest(p.Digest(), p.stat)
			}
		}
	})
	if err != nil {
		return nil, false, err
	}
	if cat == nil {
		return live, !sameDescriptors(p, live), nil
	}
	if st, err := statOf(p.Path); err == nil && st.sameFile(p.stat) && sameDescriptors(p, live) {
		live.setDigest(p.Digest(), p.stat)
		return live, false, nil
	}
	defer cat.Flush()
	d, st, err := cat.digestStat(p.Path)
	if err != nil {
		return live, true, nil // Digest hashes it again when a cache key needs it
	}
	live.setDigest(d, st)
	if sameDescriptors(p, live) {
		return live, false, nil
	}
	if now, err := statOf(p.Path); err == nil && now.sameFile(st) {
		cat.Record(d, describeReply(live))
	}
	return live, true, nil
}

// DescribeAll launches and describes every path, like LaunchAll (the
// listing command wants each plugin's own word), and with a catalog takes
// the digests from its memo and records every reply.
func (m *Manager) DescribeAll(ctx context.Context, paths []string, cat *Catalog) ([]*Plugin, []error) {
	plugins, errs := m.launchIndexed(ctx, paths)
	if cat == nil || len(errs) > 0 {
		return compact(plugins), errs
	}
	defer cat.Flush()
	for _, p := range plugins {
		d, st, err := cat.digestStat(p.Path)
		if err != nil {
			continue // Digest hashes it itself if asked
		}
		p.setDigest(d, st)
		cat.Record(d, describeReply(p))
	}
	return plugins, nil
}

func compact(plugins []*Plugin) []*Plugin {
	var out []*Plugin
	for _, p := range plugins {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}
