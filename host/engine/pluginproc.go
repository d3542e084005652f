package engine

import (
	"context"
	"time"

	"github.com/pipehost/pipehost/host/pluginmgr"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// pluginProcess puts a plugin manager process behind the Process seam. It
// is a value holding the pointer, so two wrappers of one plugin compare
// equal (the pools key on them).
type pluginProcess struct{ p *pluginmgr.Plugin }

// PluginProcess returns p as a Process.
func PluginProcess(p *pluginmgr.Plugin) Process { return pluginProcess{p} }

func (pp pluginProcess) Path() string   { return pp.p.Path }
func (pp pluginProcess) Pid() int       { return pp.p.Pid }
func (pp pluginProcess) Digest() string { return pp.p.Digest() }

func (pp pluginProcess) Run(ctx context.Context, req *pb.RunRequest, segs []shm.Outgoing) (RunStream, error) {
	s, err := pp.p.RunWithSegments(ctx, req, segs)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (pp pluginProcess) TakeSegment(ctx context.Context, token uint64) (shm.Message, int, error) {
	return pp.p.Mailbox.Take(ctx, token)
}

func (pp pluginProcess) Exited() bool                    { return pp.p.Exited() }
func (pp pluginProcess) WaitExited(d time.Duration) bool { return pp.p.WaitExited(d) }
func (pp pluginProcess) ExitStatus() string              { return pp.p.ExitStatus() }
func (pp pluginProcess) Kill()                           { pp.p.Stop() }

func (pp pluginProcess) StderrTail(n int) []string {
	if pp.p.Exited() {
		// A dead process's last lines may still be in the pipe.
		pp.p.Stderr.Settle(20*time.Millisecond, 500*time.Millisecond)
	}
	return pp.p.Stderr.Excerpt(n)
}

// registryProcesses serves each kind by the registry's plugin.
type registryProcesses struct{ reg *pluginmgr.Registry }

// RegistryProcesses returns the processes of a plugin registry.
func RegistryProcesses(reg *pluginmgr.Registry) Processes { return registryProcesses{reg} }

func (r registryProcesses) Process(kind string) (Process, bool) {
	e, ok := r.reg.Entry(kind)
	if !ok || e.Plugin == nil {
		return nil, false
	}
	return pluginProcess{e.Plugin}, true
}

// managerLauncher launches plugin processes through a plugin manager.
type managerLauncher struct{ m *pluginmgr.Manager }

// ManagerLauncher returns a Launcher starting processes with m.
func ManagerLauncher(m *pluginmgr.Manager) Launcher { return managerLauncher{m} }

func (l managerLauncher) Launch(ctx context.Context, path string) (Process, error) {
	p, err := l.m.Launch(ctx, path)
	if err != nil {
		return nil, err
	}
	return pluginProcess{p}, nil
}
