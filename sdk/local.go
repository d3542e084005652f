package sdk

import (
	"context"
	"fmt"
	"sync"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/sdk/internal/harness"
	"github.com/pipehost/pipehost/shm"
)

func init() {
	harness.Describe = func(stage any) (*pb.StageDescriptor, bool) {
		st, ok := stage.(Stage)
		return st.desc, ok && st.desc != nil
	}
	harness.Run = runLocal
}

// runLocal is the in-process Run behind package sdktest: the same runStage
// as the plugin server, with buffers bound from segments the harness made
// rather than from the fd channel.
func runLocal(ctx context.Context, stage any, req *pb.RunRequest, inputs, outputs map[string]*shm.Segment,
	send func(*pb.RunEvent) error) ([]harness.Output, error) {
	// Whatever bind did not take is closed here, whatever happened.
	defer func() {
		for _, set := range []map[string]*shm.Segment{inputs, outputs} {
			for _, seg := range set {
				seg.Close()
			}
		}
	}()
	st, ok := stage.(Stage)
	if !ok || st.desc == nil {
		return nil, fmt.Errorf("the stage was not built with sdk.Define")
	}
	var mu sync.Mutex
	var handed []harness.Output
	bind := func(context.Context) (*runData, error) {
		rd := &runData{inputs: map[string]*buffer{}, outputs: map[string]*buffer{}}
		rd.handOff = func(port string, seg *shm.Segment) (uint64, error) {
			// The Run closes its own descriptor when it ends; the harness
			// keeps a duplicate, as the host keeps the one it received.
			dup, err := seg.Dup()
			if err != nil {
				return 0, err
			}
			mu.Lock()
			defer mu.Unlock()
			handed = append(handed, harness.Output{Port: port, Token: uint64(len(handed) + 1), Seg: dup})
			return uint64(len(handed)), nil
		}
		for _, set := range []struct {
			list  []*pb.Binding
			segs  map[string]*shm.Segment
			dst   map[string]*buffer
			input bool
		}{{req.GetInputs(), inputs, rd.inputs, true}, {req.GetOutputs(), outputs, rd.outputs, false}} {
			for _, b := range set.list {
				seg, ok := set.segs[b.GetPort()]
				if !ok {
					rd.release()
					return nil, fmt.Errorf("port %q: no segment given", b.GetPort())
				}
				delete(set.segs, b.GetPort())
				buf, err := openBuffer(b, seg, set.input)
				if err != nil {
					rd.release()
					return nil, err
				}
				set.dst[b.GetPort()] = buf
			}
		}
		return rd, nil
	}
	srv := &server{}
	if err := srv.runStage(ctx, st, req, send, bind); err != nil {
		for _, o := range handed {
			o.Seg.Close()
		}
		return nil, err
	}
	return handed, nil
}
