package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/remote"
	"github.com/pipehost/pipehost/host/remote/stagerun"
	"github.com/pipehost/pipehost/host/runner"
)

const stagePipeline = `
[run]
seed = 11
[grid]
topology = "torus"
width = 512
height = 256
[stages.noise]
kind = "ref.noise-go"
`

// stageOverhead times one small stage (ref.noise-go, 512×256 f32) run by
// pipehost-stage on this machine against the same stage as a remote action
// on the executor (its inputs already in the CAS after the first round, as
// for every stage of a run but the first): upload check, Execute, reading
// outputs.json and downloading the output into a sealed memfd.
func stageOverhead(executor, platform, runnerBin, pluginDir string, rounds int) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "bench-remote-stage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	cfgPath := filepath.Join(work, "stage.toml")
	if err := os.WriteFile(cfgPath, []byte(stagePipeline), 0o644); err != nil {
		return err
	}
	cfg, err := runner.LoadConfig(cfgPath, nil)
	if err != nil {
		return err
	}
	mgr, _, reg, err := runner.StartPlugins(ctx, runner.Options{PluginDirs: []string{pluginDir}})
	if err != nil {
		return err
	}
	p, err := plan.Build(cfg, reg)
	mgr.Close()
	if err != nil {
		return err
	}
	spec, err := stagerun.NewSpec("plugins/ref-go", p, p.Node("noise"), nil)
	if err != nil {
		return err
	}
	specBytes, _ := json.Marshal(spec)
	local := filepath.Join(work, "root")
	os.MkdirAll(filepath.Join(local, "plugins"), 0o755)
	for src, dst := range map[string]string{runnerBin: "pipehost-stage", filepath.Join(pluginDir, "ref-go"): "plugins/ref-go"} {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(local, dst), b, 0o755); err != nil {
			return err
		}
	}
	os.WriteFile(filepath.Join(local, stagerun.SpecFile), specBytes, 0o644)

	props := map[string]string{}
	for _, kv := range strings.Split(platform, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			props[k] = v
		}
	}
	c, err := remote.Dial(ctx, executor, remote.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	var files []remote.File
	for _, name := range []string{"pipehost-stage", "plugins/ref-go", stagerun.SpecFile} {
		b, err := os.ReadFile(filepath.Join(local, name))
		if err != nil {
			return err
		}
		files = append(files, remote.File{Path: name, Blob: remote.BytesBlob(b), Executable: name != stagerun.SpecFile})
	}
	var localT, remoteT []time.Duration
	var want cache.Digest
	for r := 0; r <= rounds; r++ { // round 0 warms up both (page cache, CAS)
		out := filepath.Join(work, fmt.Sprintf("out%d", r))
		t0 := time.Now()
		cmd := exec.Command(filepath.Join(local, "pipehost-stage"), filepath.Join(local, stagerun.SpecFile), out)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("local pipehost-stage: %v\n%s", err, b)
		}
		lt := time.Since(t0)
		var res stagerun.Result
		b, _ := os.ReadFile(filepath.Join(out, stagerun.ResultFile))
		if err := json.Unmarshal(b, &res); err != nil {
			return err
		}
		want = res.Outputs[0].Digest

		t0 = time.Now()
		action, err := c.PrepareAction(ctx, remote.ActionSpec{
			Args: []string{"./pipehost-stage", stagerun.SpecFile, "out"}, Env: map[string]string{"PATH": "/usr/bin:/bin"},
			Inputs: files, OutputPaths: []string{"out/" + stagerun.ResultFile, "out/out"}, Platform: props,
		})
		if err != nil {
			return err
		}
		ar, err := c.Execute(ctx, action, false)
		if err != nil {
			return err
		}
		d, _ := remote.OutputFile(ar, "out/"+stagerun.ResultFile)
		if _, err := c.ReadBytes(ctx, d); err != nil {
			return err
		}
		od, _ := remote.OutputFile(ar, "out/out")
		seg, err := c.Download(ctx, od, "noise.out")
		if err != nil {
			return err
		}
		seg.Close()
		rt := time.Since(t0)
		if od != want {
			return fmt.Errorf("remote output %s differs from the local %s", od, want)
		}
		if r > 0 {
			localT, remoteT = append(localT, lt), append(remoteT, rt)
		}
		fmt.Fprintf(os.Stderr, "stage round %d/%d done\n", r, rounds)
	}
	l, rm := median(localT), median(remoteT)
	fmt.Printf("One stage (ref.noise-go, 512×256 f32, 512 KiB out), median of %d rounds\n\n", rounds)
	fmt.Println("| run | median |")
	fmt.Println("|---|---:|")
	fmt.Printf("| pipehost-stage on this machine (plugin launch, run, outputs written) | %s |\n", l.Round(time.Millisecond))
	fmt.Printf("| the same as a Buildbarn action (Execute, outputs.json, output into a sealed memfd) | %s |\n", rm.Round(time.Millisecond))
	fmt.Printf("| added per remote stage | %s |\n\n", (rm - l).Round(time.Millisecond))
	return nil
}
