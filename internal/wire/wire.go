// Package wire holds what the host and the Go SDK must agree on to speak
// go-plugin: the handshake, the plugin set and the gRPC message limits.
package wire

import (
	"context"
	"math"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// ProtocolVersion is the go-plugin application protocol version. It changes
// only with a breaking change of the stage protocol (a new proto package).
const ProtocolVersion = 1

// ProtocolRevision is the additive revision inside pipehost.v1 that Describe
// exchanges; a host accepts any plugin revision up to its own.
const ProtocolRevision = 1

// PluginName is the key of the stage service in the go-plugin plugin set.
const PluginName = "stage"

// Handshake is the go-plugin handshake. The cookie is not security: it tells
// a program started by mistake that it is not being run by pipehost.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "PIPEHOST_PLUGIN_COOKIE",
	MagicCookieValue: "8f3c1e2a-pipehost-stage-plugin-v1",
}

// MaxMessageSize raises gRPC's 4 MiB default on both ends. Bulk data never
// crosses gRPC, but a large Describe or many spans in one event may.
const MaxMessageSize = 64 << 20

// WindowSize is the HTTP/2 flow-control window of every stream and of the
// connection, on both ends. Setting it turns off gRPC's BDP estimation,
// which otherwise answers every message received with a window update and
// a ping that the other process must wake up to acknowledge: two extra
// cross-process wake-ups per stage call on a local socket, where there is
// no bandwidth-delay product to learn.
const WindowSize = 16 << 20

// ServerOptions are the gRPC server options a Go plugin uses.
func ServerOptions(opts []grpc.ServerOption) *grpc.Server {
	opts = append(opts, grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.InitialWindowSize(WindowSize), grpc.InitialConnWindowSize(WindowSize))
	return grpc.NewServer(opts...)
}

// DialOptions are the gRPC client options the host uses.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)),
		grpc.WithInitialWindowSize(WindowSize), grpc.WithInitialConnWindowSize(WindowSize),
	}
}

// StagePlugin adapts the Stage gRPC service to go-plugin. The host uses it
// with a nil Impl; a Go plugin sets Impl.
type StagePlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl pb.StageServer
}

// GRPCServer registers the stage service on the plugin's gRPC server.
func (p *StagePlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterStageServer(s, p.Impl)
	return nil
}

// GRPCClient returns a pb.StageClient for the host.
func (p *StagePlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return pb.NewStageClient(c), nil
}

// PluginSet is the go-plugin plugin map for a given side.
func PluginSet(server pb.StageServer) plugin.PluginSet {
	return plugin.PluginSet{PluginName: &StagePlugin{Impl: server}}
}
