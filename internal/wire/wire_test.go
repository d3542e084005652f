package wire

import (
	"context"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// serveEnv makes the test binary a minimal stage server in its own process
// (the value is its socket path): the far end of the round-trip benchmark.
const serveEnv = "PIPEHOST_WIRE_TEST_SERVE"

type echoStage struct{ pb.UnimplementedStageServer }

func (echoStage) Run(_ *pb.RunRequest, st pb.Stage_RunServer) error {
	return st.Send(&pb.RunEvent{Event: &pb.RunEvent_Result{Result: &pb.Result{}}})
}

func TestMain(m *testing.M) {
	if p := os.Getenv(serveEnv); p != "" {
		l, err := net.Listen("unix", p)
		if err != nil {
			os.Exit(1)
		}
		var s *grpc.Server
		if os.Getenv(serveEnv+"_DEFAULTS") != "" {
			s = grpc.NewServer(grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(math.MaxInt32))
		} else {
			s = ServerOptions(nil)
		}
		pb.RegisterStageServer(s, echoStage{})
		_ = s.Serve(l)
		return
	}
	os.Exit(m.Run())
}

// BenchmarkRunRoundTrip is the floor of one stage call between two
// processes: a Run with an empty request, one Result event and the stream's
// end, over a unix socket, through gRPC alone (no fds, no engine). "pipehost"
// uses this package's options; "grpc-defaults" gRPC's own, with BDP
// estimation on, in the same run.
//
//	go test -run '^$' -bench RunRoundTrip -count 5 ./internal/wire/
func BenchmarkRunRoundTrip(b *testing.B) {
	for _, mode := range []string{"pipehost", "grpc-defaults"} {
		b.Run(mode, func(b *testing.B) {
			sock := filepath.Join(b.TempDir(), "s")
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), serveEnv+"="+sock)
			dial := DialOptions()
			if mode == "grpc-defaults" {
				cmd.Env = append(cmd.Env, serveEnv+"_DEFAULTS=1")
				dial = dial[:1]
			}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				if _, err := os.Stat(sock); err == nil {
					break
				} else if time.Now().After(deadline) {
					b.Fatal("the server process did not listen")
				}
			}
			cc, err := grpc.NewClient("unix://"+sock, append(dial, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			c := pb.NewStageClient(cc)
			call := func() {
				st, err := c.Run(context.Background(), &pb.RunRequest{Stage: "s", Kind: "k"}, grpc.WaitForReady(true))
				if err != nil {
					b.Fatal(err)
				}
				results := 0
				for {
					ev, err := st.Recv()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if ev.GetResult() != nil {
						results++
					}
				}
				if results != 1 {
					b.Fatalf("%d results, want 1", results)
				}
			}
			call() // connect
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				call()
			}
		})
	}
}
