// Package xfer is what the hand-off benchmark's host (bench/handoff) and its
// plugin (testplugins/go/benchxfer) share: the go-plugin wrapper of the
// bench-only Transfer service, the grid's fill pattern and its expected sum,
// the .npy file layout, and the process memory readings.
package xfer

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	benchv1 "github.com/pipehost/pipehost/proto/benchv1"
)

// PluginName is the Transfer service's key in the go-plugin plugin set.
const PluginName = "bench.transfer"

// Stage kinds the benchmark plugin offers.
const (
	KindProduce = "bench.produce"
	KindConsume = "bench.consume"
)

// Ways a producer fills its grid and a consumer reads it (the "way" param).
const (
	// WayShm: the pre-allocated output segment / the sealed input segment.
	WayShm = "shm"
	// WayGRPC: a Go slice kept for Transfer.Pull (producer only; the
	// consumer side is Transfer.Push).
	WayGRPC = "grpc"
	// WayNPY: a Go slice written to / read from an .npy file at "path".
	WayNPY = "npy"
	// WaySlice: a fresh Go slice, filled and dropped (producer only).
	WaySlice = "slice"
)

// Port is the grid port of both stage kinds.
const Port = "grid"

// TransferPlugin adapts the Transfer service to go-plugin. The host uses
// it with a nil Impl.
type TransferPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl benchv1.TransferServer
}

// GRPCServer registers the service on the plugin's gRPC server.
func (p *TransferPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	benchv1.RegisterTransferServer(s, p.Impl)
	return nil
}

// GRPCClient returns a benchv1.TransferClient.
func (p *TransferPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return benchv1.NewTransferClient(c), nil
}
