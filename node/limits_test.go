package node

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// TestRequestLimits checks that the largest legitimate request of each
// kind fits its method's receive limit, that a larger one is refused
// (ErrRequestTooLarge), and that the limit of the server carrying every
// service but Raft is that of its largest request, far under Raft's.
func TestRequestLimits(t *testing.T) {
	l := grid.DefaultLimits()
	r := newRequestLimits(l)
	key := bytes.Repeat([]byte("k"), l.MaxKeyBytes)
	value := bytes.Repeat([]byte("v"), l.MaxValueBytes)
	hdr := &gridpb.WriteHeader{Map: string(bytes.Repeat([]byte("m"), grid.MaxMapNameLen)), ClientId: 1 << 60, Seq: 1 << 60}
	fence := &gridpb.Fence{Name: string(key), Token: 1 << 60}
	put := &gridpb.PutRequest{Header: hdr, Key: key, Value: value, Crc: 1, Fence: fence, TtlNanos: 1 << 60}
	cas := &gridpb.CompareAndSwapRequest{Header: hdr, Key: key, ExpectedVersion: 1 << 60, Value: value, Crc: 1, TtlNanos: 1 << 60, Fence: fence}
	// A transaction: compares and each branch up to the value limit with
	// keys, spread over maxTxnOps ops.
	per := l.MaxValueBytes / (maxTxnOps / 3)
	txn := &gridpb.TxnRequest{Header: hdr, Fence: fence}
	for i := 0; i < maxTxnOps/3; i++ {
		txn.Compares = append(txn.Compares, &gridpb.TxnCompare{Key: []byte("c"), Value: value[:per-1]})
		txn.ThenOps = append(txn.ThenOps, &gridpb.TxnWrite{Key: []byte("t"), Value: value[:per-1], Crc: 1, TtlNanos: 1 << 60})
		txn.ElseOps = append(txn.ElseOps, &gridpb.TxnWrite{Key: []byte("e"), Value: value[:per-1], Crc: 1, TtlNanos: 1 << 60})
	}
	for _, tc := range []struct {
		method string
		req    any
	}{
		{gridpb.KV_Put_FullMethodName, put},
		{gridpb.KV_CompareAndSwap_FullMethodName, cas},
		{gridpb.KV_Txn_FullMethodName, txn},
		{gridpb.Raft_AppendEntries_FullMethodName, &gridpb.RaftAppendEntriesRequest{Entries: []*gridpb.RaftLog{{Data: bytes.Repeat(value, 8)}}}},
	} {
		if err := r.check(tc.method, tc.req); err != nil {
			t.Errorf("the largest %s: %v", tc.method, err)
		}
	}
	bigPut := &gridpb.PutRequest{Header: hdr, Key: key, Value: make([]byte, r.base)}
	if err := r.check(gridpb.KV_Put_FullMethodName, bigPut); !errors.Is(err, grid.ErrRequestTooLarge) {
		t.Errorf("a put of %d bytes: %v", r.base, err)
	}
	if err := r.check(gridpb.Admin_CreateMap_FullMethodName, &gridpb.CreateMapRequest{Name: string(make([]byte, r.base))}); !errors.Is(err, grid.ErrRequestTooLarge) {
		t.Errorf("an oversized admin request: %v", err)
	}
	if err := r.check(gridpb.KV_Txn_FullMethodName, bigPut); err != nil {
		t.Errorf("the same bytes as a transaction: %v", err)
	}
	if r.server() != r.txn || r.server() >= 8<<20 {
		t.Errorf("the services' server takes %d bytes (transactions %d)", r.server(), r.txn)
	}
}

// TestRequestBudget checks the node's budget for requests in progress: a
// call is admitted while the calls admitted, each counted at the most one
// request may bring, fit it; one more is refused (ErrOverloaded) until a
// call ends; Raft calls of an insecure node are not counted.
func TestRequestBudget(t *testing.T) {
	r := newRequestLimits(grid.DefaultLimits())
	s := &security{limits: r, budget: 2 * int64(r.server())}
	var cancels []context.CancelFunc
	for i := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if _, err := s.reserve(ctx, gridpb.KV_Get_FullMethodName); err != nil {
			t.Fatalf("call %d within the budget: %v", i, err)
		}
		cancels = append(cancels, cancel)
	}
	if _, err := s.reserve(context.Background(), gridpb.KV_Put_FullMethodName); !errors.Is(gridpb.FromStatus(err), grid.ErrOverloaded) {
		t.Fatalf("a call over the budget: %v", err)
	}
	if _, err := s.reserve(context.Background(), gridpb.Raft_AppendEntries_FullMethodName); err != nil {
		t.Fatalf("a Raft call of an insecure node: %v", err)
	}
	cancels[0]() // the call ends
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.reserve(context.Background(), gridpb.KV_Put_FullMethodName)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a call after one ended: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	// A server stream gives its share back once its request is in.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.budget += int64(r.server())
	ctx, err := s.reserve(ctx, gridpb.Watch_Watch_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	st := &openStream{ServerStream: &oneRequest{ctx: ctx}, sec: s, method: gridpb.Watch_Watch_FullMethodName}
	if err := st.RecvMsg(&gridpb.WatchRequest{Map: "m"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.reserve(context.Background(), gridpb.KV_Put_FullMethodName); err != nil {
		t.Fatalf("a call once a watch's request was in: %v", err)
	}
}

// oneRequest is a server stream whose request arrives at once.
type oneRequest struct {
	grpc.ServerStream
	ctx context.Context
}

func (o *oneRequest) Context() context.Context { return o.ctx }
func (o *oneRequest) RecvMsg(any) error        { return nil }
