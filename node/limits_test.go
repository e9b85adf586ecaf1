package node

import (
	"bytes"
	"errors"
	"testing"

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
