package pluginmgr

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/internal/clock"
	"github.com/pipehost/pipehost/internal/wire"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// Options configure a Manager.
type Options struct {
	// StartTimeout bounds launch → handshake → Describe (default 10 s).
	StartTimeout time.Duration
	// Env is added to every plugin's environment (KEY=VALUE). Plugins
	// otherwise get only PATH, HOME, LANG, TMPDIR and what pipehost sets.
	Env []string
	// Logger receives go-plugin's and the plugins' hclog output.
	Logger hclog.Logger
	// StderrLines is how many stderr lines each plugin's Tail keeps (default
	// 400: enough to hold the start of a crash dump).
	StderrLines int
	// Plugins are go-plugin plugins a plugin may serve besides the stage
	// service (sdk.ServeWith); get their clients with Plugin.Dispense.
	Plugins plugin.PluginSet
}

// Plugin is one running plugin process.
type Plugin struct {
	Path       string
	SDK        string
	SDKVersion string
	Stages     []*pb.StageDescriptor
	Pid        int
	// LaunchNs is launch → first Describe reply, in nanoseconds.
	LaunchNs int64
	Stderr   *Tail

	Client  pb.StageClient
	Channel *shm.Channel
	Mailbox *shm.Mailbox
	// ChannelRuns: the plugin takes runs on its fd channel (RunOnChannel),
	// and EnvRunOverGRPC is not set.
	ChannelRuns bool
	chanRuns    channelRuns

	client *plugin.Client
	rpc    plugin.ClientProtocol
	cmd    *exec.Cmd
	once   sync.Once

	digestOnce sync.Once
	digest     string
	// stat is the file state digest belongs to, when a Catalog gave it.
	stat statRecord
}

// Digest is the SHA-256 of the plugin executable (hex): the one a Catalog
// found when it described the plugin, else computed on first use (only
// cache keys need it, and hashing every binary would slow every launch).
func (p *Plugin) Digest() string {
	p.digestOnce.Do(func() { p.digest = fileDigest(p.Path) })
	return p.digest
}

// setDigest fixes Digest's answer, before its first use.
func (p *Plugin) setDigest(d string, st statRecord) {
	p.digestOnce.Do(func() { p.digest, p.stat = d, st })
}

// Running reports whether a process was started for p (it may have ended
// since). A plugin described from a Catalog has none until Start.
func (p *Plugin) Running() bool { return p.client != nil }

// Manager owns every plugin process of a run and the private directory
// their sockets live in.
type Manager struct {
	opts    Options
	sockDir string

	mu       sync.Mutex
	plugins  []*Plugin
	closed   bool
	onStderr func(p *Plugin, line string)
	onLaunch func(p *Plugin)
	pending  map[string]*pendingStart // Prestart by path
}

// OnLaunch calls f with every plugin process launched from now on, once it
// has answered Describe.
func (m *Manager) OnLaunch(f func(p *Plugin)) {
	m.mu.Lock()
	m.onLaunch = f
	m.mu.Unlock()
}

// OnStderr routes every stderr line of every plugin, running or launched
// later, to f (nil stops it).
func (m *Manager) OnStderr(f func(p *Plugin, line string)) {
	m.mu.Lock()
	m.onStderr = f
	plugins := append([]*Plugin(nil), m.plugins...)
	m.mu.Unlock()
	for _, p := range plugins {
		p.routeStderr(f)
	}
}

func (p *Plugin) routeStderr(f func(p *Plugin, line string)) {
	if f == nil {
		p.Stderr.SetOnLine(nil)
		return
	}
	p.Stderr.SetOnLine(func(line string) { f(p, line) })
}

// Plugins lists every plugin process started so far (including stopped
// and relaunched ones).
func (m *Manager) Plugins() []*Plugin {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*Plugin(nil), m.plugins...)
}

// New makes a Manager with a private 0700 socket directory.
func New(opts Options) (*Manager, error) {
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 10 * time.Second
	}
	if opts.StderrLines == 0 {
		opts.StderrLines = 400
	}
	opts.Logger = safeLogger(opts.Logger)
	if opts.Logger == nil {
		opts.Logger = hclog.New(&hclog.LoggerOptions{Name: "pipehost", Level: hclog.Off})
	}
	dir, err := makeSocketDir()
	if err != nil {
		return nil, err
	}
	return &Manager{opts: opts, sockDir: dir}, nil
}

// SocketDir is the private directory the plugins' sockets are made in.
func (m *Manager) SocketDir() string { return m.sockDir }

// socketDirPrefix starts every socket directory's name, followed by the
// owning host's pid, so a later run can tell a dead run's directory.
const socketDirPrefix = "pipehost-sock-"

const (
	// sunPathMax is the size of sockaddr_un.sun_path on Linux; a path must
	// leave room for its terminating NUL, so it is at most 107 bytes.
	sunPathMax = 108
	// maxSocketName bounds the name a plugin gives its socket inside the
	// directory: go-plugin's os.CreateTemp(dir, "plugin") makes "plugin"
	// plus up to 10 digits (16 bytes), the Rust and Python SDKs "plugin"
	// plus 9 digits, the C++ SDK "plugin" plus 6 characters.
	maxSocketName = 24
	// mkdirTempSuffix is the longest random part os.MkdirTemp adds (a
	// uint32 in decimal).
	mkdirTempSuffix = 10
)

// makeSocketDir creates the private 0700 socket directory in the first of
// socketBases where every socket path a plugin can make stays under the
// sun_path limit, whatever the length of $TMPDIR. It first removes the
// directories of dead hosts in every base.
func makeSocketDir() (string, error) {
	prefix := socketDirPrefix + strconv.Itoa(os.Getpid()) + "-"
	var tried []string
	for _, base := range socketBases() {
		removeStaleSocketDirs(base)
	}
	for _, base := range socketBases() {
		// base + "/" + prefix + random + "/" + socket name, then the NUL.
		if worst := len(base) + 1 + len(prefix) + mkdirTempSuffix + 1 + maxSocketName + 1; worst > sunPathMax {
			tried = append(tried, fmt.Sprintf("%s: socket paths could reach %d bytes, over the %d of sun_path", base, worst, sunPathMax))
			continue
		}
		dir, err := os.MkdirTemp(base, prefix)
		if err == nil {
			if err = os.Chmod(dir, 0o700); err == nil {
				return dir, nil
			}
			os.RemoveAll(dir)
		}
		tried = append(tried, err.Error())
	}
	return "", fmt.Errorf("creating plugin socket directory: %s", strings.Join(tried, "; "))
}

// socketBases are the candidate parents of the socket directory, in order
// of preference: $TMPDIR (os.TempDir), $XDG_RUNTIME_DIR, /tmp. Each is
// absolute and clean; duplicates are dropped.
func socketBases() []string {
	var out []string
	seen := map[string]bool{}
	for _, b := range []string{os.TempDir(), os.Getenv("XDG_RUNTIME_DIR"), "/tmp"} {
		if b == "" {
			continue
		}
		abs, err := filepath.Abs(b)
		if err != nil || seen[abs] {
			continue
		}
		seen[abs] = true
		out = append(out, abs)
	}
	return out
}

// removeStaleSocketDirs deletes socket directories in base left by
// pipehost processes of this user that no longer exist (killed with
// SIGKILL, so they could not clean up; their plugins died with them
// through Pdeathsig).
func removeStaleSocketDirs(base string) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	uid := uint32(os.Getuid())
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), socketDirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		// /tmp is shared: another user's directory is theirs to remove.
		if info, err := e.Info(); err != nil || info.Sys().(*syscall.Stat_t).Uid != uid {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(filepath.Join(base, e.Name()))
		}
	}
}

// LaunchError says which plugin failed to start, and why.
type LaunchError struct {
	Path   string
	Err    error
	Stderr []string
}

func (e *LaunchError) Error() string {
	msg := fmt.Sprintf("plugin %s: %v", e.Path, e.Err)
	if len(e.Stderr) > 0 {
		msg += "\n  last stderr lines:\n    " + strings.Join(e.Stderr, "\n    ")
	}
	return msg
}

func (e *LaunchError) Unwrap() error { return e.Err }

// LaunchAll starts every path at once and returns the plugins that came up
// plus one error per path that did not.
func (m *Manager) LaunchAll(ctx context.Context, paths []string) ([]*Plugin, []error) {
	plugins := make([]*Plugin, len(paths))
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	for i, p := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			plugins[i], errs[i] = m.Launch(ctx, p)
		}()
	}
	wg.Wait()
	var ok []*Plugin
	var failed []error
	for i := range paths {
		if errs[i] != nil {
			failed = append(failed, errs[i])
		} else {
			ok = append(ok, plugins[i])
		}
	}
	return ok, failed
}

// launches counts plugin processes started by this program.
var launches atomic.Int64

// Launches is how many plugin processes this program has started (or
// tried to), across every Manager: what a run costs in launches.
func Launches() int64 { return launches.Load() }

// Launch starts one plugin and asks it what it offers.
func (m *Manager) Launch(ctx context.Context, path string) (*Plugin, error) {
	if p, ok, err := m.claim(ctx, path); ok {
		return p, err
	}
	return m.launch(ctx, path)
}

// launch starts a new process of the plugin at path, whatever is pending.
func (m *Manager) launch(ctx context.Context, path string) (*Plugin, error) {
	return m.launchKnown(ctx, path, nil)
}

// launchKnown is launch; known, when set, is called with the new process
// once it has described itself and before OnLaunch's callback, so it can fix
// the digest the callback records (which would otherwise hash the binary).
func (m *Manager) launchKnown(ctx context.Context, path string, known func(p *Plugin)) (*Plugin, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, &LaunchError{Path: path, Err: errors.New("plugin manager is closed")}
	}
	m.mu.Unlock()
	launches.Add(1)

	start := clock.Now()
	local, remote, err := shm.NewChannelPair()
	if err != nil {
		return nil, &LaunchError{Path: path, Err: err}
	}
	p := &Plugin{Path: path, Stderr: NewTail(m.opts.StderrLines), Channel: local}
	cmd := exec.Command(path)
	cmd.Env = append(m.baseEnv(), m.opts.Env...)
	cmd.ExtraFiles = []*os.File{remote}
	// Pdeathsig: the plugin dies with the host. The kernel ties it to the
	// thread that forks, not the process, so no host code may let an OS
	// thread end (a goroutine exiting while LockOSThread'ed): that would
	// kill the plugins started from it. Setpgid: stopping the plugin stops
	// whatever it started too, which would otherwise hold its stderr open and
	// stall shutdown.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	p.cmd = cmd
	p.client = plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  wire.Handshake,
		Plugins:          m.pluginSet(),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		SkipHostEnv:      true,
		StartTimeout:     m.opts.StartTimeout,
		Logger:           m.opts.Logger.Named(baseName(path)),
		Stderr:           p.Stderr,
		SyncStderr:       p.Stderr,
		SyncStdout:       io.Discard,
		GRPCDialOptions:  wire.DialOptions(),
	})
	m.mu.Lock()
	m.plugins = append(m.plugins, p)
	if m.onStderr != nil {
		p.routeStderr(m.onStderr)
	}
	m.mu.Unlock()

	fail := func(err error) (*Plugin, error) {
		// Nothing graceful is owed to a plugin that never came up.
		p.killGroup()
		p.Stop()
		if st := p.ExitStatus(); st != "" {
			err = fmt.Errorf("%w (%s)", err, st)
		}
		return nil, &LaunchError{Path: path, Err: err, Stderr: p.Stderr.Excerpt(12)}
	}
	rpc, err := p.client.Client()
	remote.Close() // the child has its copy (or never started)
	if err != nil {
		return fail(explainStart(err))
	}
	if cmd.Process != nil {
		p.Pid = cmd.Process.Pid
	}
	p.Mailbox = shm.NewMailbox(local)
	p.Mailbox.Route(p.route)
	p.Mailbox.OnIdle(p.wakeRuns)
	p.rpc = rpc
	raw, err := rpc.Dispense(wire.PluginName)
	if err != nil {
		return fail(fmt.Errorf("not a pipehost stage plugin: %w", err))
	}
	p.Client = raw.(pb.StageClient)
	dctx, cancel := context.WithTimeout(ctx, m.opts.StartTimeout)
	defer cancel()
	resp, err := p.Client.Describe(dctx, &pb.DescribeRequest{ProtocolRevision: wire.ProtocolRevision})
	if err != nil {
		return fail(fmt.Errorf("Describe failed: %w", err))
	}
	if len(resp.GetStages()) == 0 {
		return fail(errors.New("the plugin offers no stages"))
	}
	p.Stages, p.SDK, p.SDKVersion = resp.GetStages(), resp.GetSdk(), resp.GetSdkVersion()
	_, overGRPC := os.LookupEnv(EnvRunOverGRPC)
	p.ChannelRuns = resp.GetChannelRuns() && !overGRPC
	p.LaunchNs = clock.Now() - start
	if known != nil {
		known(p)
	}
	m.mu.Lock()
	onLaunch := m.onLaunch
	m.mu.Unlock()
	if onLaunch != nil {
		onLaunch(p)
	}
	return p, nil
}

// pluginSet is the stage plugin plus Options.Plugins.
func (m *Manager) pluginSet() plugin.PluginSet {
	set := wire.PluginSet(nil)
	for name, p := range m.opts.Plugins {
		if name != wire.PluginName {
			set[name] = p
		}
	}
	return set
}

// Dispense returns the client of a service the plugin offers besides the
// stage service, named as in Options.Plugins.
func (p *Plugin) Dispense(name string) (any, error) {
	if p.rpc == nil {
		return nil, fmt.Errorf("plugin %s: not connected", p.Path)
	}
	c, err := p.rpc.Dispense(name)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", p.Path, err)
	}
	return c, nil
}

func (m *Manager) baseEnv() []string {
	env := []string{
		shm.EnvFDChannel + "=3",
		"PLUGIN_UNIX_SOCKET_DIR=" + m.sockDir,
	}
	for _, k := range []string{"PATH", "HOME", "LANG", "TMPDIR", "GORACE"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// explainStart turns go-plugin's start errors into a sentence for users.
func explainStart(err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Failed to read any lines from plugin's stdout"):
		return errors.New("not a pipehost plugin: it exited during the handshake")
	case strings.Contains(msg, "Unrecognized remote plugin message"):
		return fmt.Errorf("not a pipehost plugin: its first line on stdout was not a go-plugin handshake (%s)", firstLine(msg))
	case strings.Contains(msg, "timeout while waiting for plugin to start"):
		return errors.New("not a pipehost plugin: it did not complete the handshake in time")
	case strings.Contains(msg, "plugin exited before we could connect"):
		return errors.New("not a pipehost plugin: it exited during the handshake")
	case strings.Contains(msg, "Incompatible API version"), strings.Contains(msg, "Incompatible"):
		return fmt.Errorf("plugin speaks another protocol version: %s", firstLine(msg))
	}
	return fmt.Errorf("starting plugin: %w", err)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i])
	}
	return strings.TrimSpace(s)
}

func baseName(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[i+1:]
	}
	return path
}

// fileHashes counts fileDigest's calls, for tests: a plugin the catalog
// knows must not be hashed again.
var fileHashes atomic.Int64

func fileDigest(path string) string {
	fileHashes.Add(1)
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Exited reports whether the plugin process has ended (true when none was
// ever started).
func (p *Plugin) Exited() bool { return p.client == nil || p.client.Exited() }

// WaitExited waits up to d for the process to be reported gone. A
// connection lost mid-call usually means the process is dying; waiting a
// moment lets a failure report say how it ended.
func (p *Plugin) WaitExited(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !p.Exited() {
		// go-plugin reports the exit only once the plugin's stdout and
		// stderr close: a child still holding them would hide it. Once the
		// plugin itself is dead, end what is left of its group.
		if p.leaderDead() {
			p.killGroup()
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// ExitStatus describes how the process ended ("exit status 2", "signal:
// segmentation fault"), or "" while it runs.
func (p *Plugin) ExitStatus() string {
	if p.client == nil || !p.client.Exited() || p.cmd.ProcessState == nil {
		return ""
	}
	return p.cmd.ProcessState.String()
}

// Stop ends the plugin: a CLOSE on the fd channel (the SDK exits at once),
// go-plugin's Kill, and SIGKILL to its process group if it lingers. It
// returns once nothing of the plugin is left. Safe to call many times.
func (p *Plugin) Stop() {
	if p.client == nil {
		return
	}
	p.once.Do(func() {
		if p.Channel != nil {
			_ = p.Channel.Send(shm.Message{Type: shm.MsgClose}, -1)
		}
		done := make(chan struct{})
		go func() { p.client.Kill(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
		}
		// The group outlives its leader only through the leader's children.
		p.killGroup()
		<-done
		if p.Mailbox != nil {
			_ = p.Mailbox.Close()
		} else if p.Channel != nil {
			_ = p.Channel.Close()
		}
	})
}

// leaderDead reports whether the plugin process has ended (it is a zombie
// not yet reaped), without reaping it.
func (p *Plugin) leaderDead() bool {
	if p.cmd.Process == nil {
		return false
	}
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, p.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return err == nil && info.Signo == int32(unix.SIGCHLD)
}

// killGroup SIGKILLs the plugin's process group.
func (p *Plugin) killGroup() {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// Close stops every plugin (in parallel) and removes the socket directory.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	plugins := m.plugins
	m.plugins = nil
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range plugins {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop() }()
	}
	wg.Wait()
	return os.RemoveAll(m.sockDir)
}

// StopUnused stops plugins that serve none of the kinds in use.
func (m *Manager) StopUnused(used map[*Plugin]bool) {
	m.mu.Lock()
	var keep, stop []*Plugin
	for _, p := range m.plugins {
		if used[p] {
			keep = append(keep, p)
		} else {
			stop = append(stop, p)
		}
	}
	m.plugins = append(keep, stop...) // Close still stops them if needed
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range stop {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop() }()
	}
	wg.Wait()
}

// pluginLogger is the logger handed to go-plugin. go-plugin parses every
// plugin stderr line as hclog JSON when its logger is enabled, and panics
// (taking the host down) on a line whose @message, @level or @timestamp is
// not a string. Reporting the plugin loggers as off skips that parser; the
// run log reads each plugin's stderr itself (parseHCLog), so no line is lost,
// and go-plugin's own messages still reach the logger.
type pluginLogger struct{ hclog.Logger }

func safeLogger(l hclog.Logger) hclog.Logger {
	if l == nil {
		return nil
	}
	return pluginLogger{l}
}

func (l pluginLogger) GetLevel() hclog.Level { return hclog.Off }

func (l pluginLogger) Named(name string) hclog.Logger { return pluginLogger{l.Logger.Named(name)} }

func (l pluginLogger) ResetNamed(name string) hclog.Logger {
	return pluginLogger{l.Logger.ResetNamed(name)}
}

func (l pluginLogger) With(args ...interface{}) hclog.Logger {
	return pluginLogger{l.Logger.With(args...)}
}
