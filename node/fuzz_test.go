package node_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/node"
)

// fuzzCall sends one decoded request to a node through its real gRPC
// services. Cluster, Integrity and Raft are left out: they are the
// members' own (issue 12 puts them behind a peer role).
type fuzzCall struct {
	name string
	req  proto.Message
	call func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error
}

func fuzzCalls() []fuzzCall {
	kv := func(cc *grpc.ClientConn) gridpb.KVClient { return gridpb.NewKVClient(cc) }
	return []fuzzCall{
		{"Put", &gridpb.PutRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := kv(cc).Put(ctx, m.(*gridpb.PutRequest))
			return err
		}},
		{"Get", &gridpb.GetRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := kv(cc).Get(ctx, m.(*gridpb.GetRequest))
			return err
		}},
		{"Delete", &gridpb.DeleteRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := kv(cc).Delete(ctx, m.(*gridpb.DeleteRequest))
			return err
		}},
		{"CompareAndSwap", &gridpb.CompareAndSwapRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := kv(cc).CompareAndSwap(ctx, m.(*gridpb.CompareAndSwapRequest))
			return err
		}},
		{"Txn", &gridpb.TxnRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := kv(cc).Txn(ctx, m.(*gridpb.TxnRequest))
			return err
		}},
		{"Scan", &gridpb.ScanRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			st, err := kv(cc).Scan(ctx, m.(*gridpb.ScanRequest))
			for err == nil {
				_, err = st.Recv()
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}},
		{"CreateMap", &gridpb.CreateMapRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := gridpb.NewAdminClient(cc).CreateMap(ctx, m.(*gridpb.CreateMapRequest))
			return err
		}},
		{"Acquire", &gridpb.AcquireLockRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := gridpb.NewLockClient(cc).Acquire(ctx, m.(*gridpb.AcquireLockRequest))
			return err
		}},
		{"Renew", &gridpb.RenewLockRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := gridpb.NewLockClient(cc).Renew(ctx, m.(*gridpb.RenewLockRequest))
			return err
		}},
		{"Release", &gridpb.ReleaseLockRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := gridpb.NewLockClient(cc).Release(ctx, m.(*gridpb.ReleaseLockRequest))
			return err
		}},
		{"Restore", &gridpb.RestoreRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := gridpb.NewBackupClient(cc).Restore(ctx, m.(*gridpb.RestoreRequest))
			return err
		}},
		{"Apply", &gridpb.ApplyRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := gridpb.NewComputeClient(cc).Apply(ctx, m.(*gridpb.ApplyRequest))
			return err
		}},
		{"Explain", &gridpb.SubmitRequest{}, func(ctx context.Context, cc *grpc.ClientConn, m proto.Message) error {
			_, err := gridpb.NewComputeClient(cc).Explain(ctx, m.(*gridpb.SubmitRequest))
			return err
		}},
	}
}

// FuzzGRPCRequests decodes the input as one of the client-facing requests
// and sends it to a real one-node cluster: whatever the fields hold, the
// node answers (a result or a clear status, never Internal or Unknown, and
// within the deadline) and stays up.
func FuzzGRPCRequests(f *testing.F) {
	e := startEmbedded(f, 1, func(_ string, cfg *node.Config) { cfg.Partitions, cfg.Replicas = 4, 1 })
	if len(e.nodes) != 1 {
		f.Fatal("node did not start")
	}
	f.Cleanup(e.stopAll)
	cc, err := grpc.NewClient(e.addrs()[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { cc.Close() })
	calls := fuzzCalls()
	// Maps exist before the fuzzing starts, so requests reach past the
	// map lookup.
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := gridpb.NewAdminClient(cc).CreateMap(ctx, &gridpb.CreateMapRequest{Name: "m"})
		cancel()
		if err == nil || status.Code(err) == codes.AlreadyExists {
			break
		}
		if time.Now().After(deadline) {
			f.Fatalf("create map: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	seed := func(i int, m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	seed(0, &gridpb.PutRequest{Header: &gridpb.WriteHeader{Map: "m", ClientId: 1, Seq: 1}, Key: []byte("k"), Value: []byte("v")})
	seed(1, &gridpb.GetRequest{Map: "m", Key: []byte("k")})
	seed(2, &gridpb.DeleteRequest{Header: &gridpb.WriteHeader{Map: "m", ClientId: 1, Seq: 2}, Key: []byte("k")})
	seed(3, &gridpb.CompareAndSwapRequest{Header: &gridpb.WriteHeader{Map: "m", ClientId: 1, Seq: 3}, Key: []byte("k"), Value: []byte("w")})
	seed(4, &gridpb.TxnRequest{Header: &gridpb.WriteHeader{Map: "m", ClientId: 1, Seq: 4}})
	seed(5, &gridpb.ScanRequest{Map: "m", Prefix: []byte("k")})
	seed(6, &gridpb.CreateMapRequest{Name: "other"})
	seed(7, &gridpb.AcquireLockRequest{Name: "l", Owner: []byte("0123456789abcdef"), TtlNs: int64(time.Second)})
	seed(10, &gridpb.RestoreRequest{ClientId: 1, Seq: 9, Partition: 1, Entries: []*gridpb.BackupEntry{{Map: "m", Key: []byte("r"), Value: []byte("v")}}})
	seed(11, &gridpb.ApplyRequest{Header: &gridpb.WriteHeader{Map: "m", ClientId: 1, Seq: 5}, Key: []byte("k"), Script: "def process(e, args):\n    return e\n"})
	seed(12, &gridpb.SubmitRequest{Job: &gridpb.JobSpec{Map: "m"}})
	f.Fuzz(func(t *testing.T, which uint8, payload []byte) {
		c := calls[int(which)%len(calls)]
		req := proto.Clone(c.req)
		if proto.Unmarshal(payload, req) != nil {
			return // not a request: gRPC itself refuses it before any handler
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := c.call(ctx, cc, req)
		switch status.Code(err) {
		case codes.Internal, codes.Unknown, codes.DeadlineExceeded:
			t.Fatalf("%s(%v): %v", c.name, req, err)
		}
		hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer hcancel()
		if _, err := gridpb.NewAdminClient(cc).Status(hctx, &gridpb.StatusRequest{}); err != nil {
			t.Fatalf("node stopped answering after %s(%v): %v", c.name, req, err)
		}
	})
}
