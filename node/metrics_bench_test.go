package node

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
)

// BenchmarkRPCMetrics is what --ops-listen adds to one unary RPC: the same
// loopback call (client and server in this process) without and with the
// node's RPC metrics interceptor and its byte-counting listener, and, for
// comparison, with a gRPC stats handler counting the same bytes (what the
// node did first). go test -run '^$' -bench RPCMetrics -count 4 ./node
func BenchmarkRPCMetrics(b *testing.B) {
	for _, mode := range []string{"off", "on", "stats-handler"} {
		b.Run(mode, func(b *testing.B) {
			var opts []grpc.ServerOption
			if mode == "stats-handler" {
				opts = append(opts, grpc.StatsHandler(&statsBytes{}))
			}
			if mode == "on" {
				rpcs := newRPCMetrics()
				prometheus.NewRegistry().MustRegister(rpcs)
				opts = append(opts, grpc.ChainUnaryInterceptor(rpcs.UnaryServerInterceptor()))
			}
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			if mode == "on" {
				lis = (&wireBytes{}).listener(lis)
			}
			srv := grpc.NewServer(opts...)
			healthpb.RegisterHealthServer(srv, health.NewServer())
			served := make(chan struct{})
			go func() {
				defer close(served)
				_ = srv.Serve(lis)
			}()
			defer func() {
				srv.Stop()
				<-served
			}()
			cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			c := healthpb.NewHealthClient(cc)
			ctx := context.Background()
			for b.Loop() {
				if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// statsBytes counts bytes with a gRPC stats handler, for comparison.
type statsBytes struct{ in, out atomic.Uint64 }

func (w *statsBytes) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (w *statsBytes) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (w *statsBytes) HandleConn(context.Context, stats.ConnStats)                       {}
func (w *statsBytes) HandleRPC(_ context.Context, s stats.RPCStats) {
	switch s := s.(type) {
	case *stats.InPayload:
		w.in.Add(uint64(s.WireLength))
	case *stats.OutPayload:
		w.out.Add(uint64(s.WireLength))
	}
}
