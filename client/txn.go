package client

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Cmp is one condition of a transaction.
type Cmp struct{ c *gridpb.TxnCompare }

// VersionIs holds when key's version is v (0: the key is absent).
func VersionIs(key []byte, v uint64) Cmp {
	return Cmp{&gridpb.TxnCompare{Key: key, Target: gridpb.TxnCompare_VERSION, Version: v}}
}

// ValueIs holds when key exists with exactly this value.
func ValueIs(key, value []byte) Cmp {
	return Cmp{&gridpb.TxnCompare{Key: key, Target: gridpb.TxnCompare_VALUE, Value: value}}
}

// Exists holds when key exists.
func Exists(key []byte) Cmp {
	return Cmp{&gridpb.TxnCompare{Key: key, Target: gridpb.TxnCompare_EXISTS}}
}

// Missing holds when key does not exist.
func Missing(key []byte) Cmp {
	return Cmp{&gridpb.TxnCompare{Key: key, Target: gridpb.TxnCompare_MISSING}}
}

// Op is one write of a transaction.
type Op struct{ w *gridpb.TxnWrite }

// OpPut sets key to value.
func OpPut(key, value []byte) Op {
	return Op{&gridpb.TxnWrite{Key: key, Value: value, Crc: checksum(value)}}
}

// OpDelete removes key.
func OpDelete(key []byte) Op { return Op{&gridpb.TxnWrite{Key: key, Delete: true}} }

// Txn is a transaction on keys of one partition (give related keys one
// {hash tag}): if every compare holds, the Then writes apply, otherwise the
// Else writes — all of them or none, in one Raft entry.
type Txn struct {
	m    *Map
	ctx  context.Context
	cmps []*gridpb.TxnCompare
	then []*gridpb.TxnWrite
	els  []*gridpb.TxnWrite
	opts []WriteOption
}

// With sets write options for the whole transaction: WithFence (a stale
// token refuses the transaction before any compare). A TTL belongs to each
// put (Op.TTL), not here.
func (t *Txn) With(opts ...WriteOption) *Txn {
	t.opts = append(t.opts, opts...)
	return t
}

// Txn starts a transaction.
func (m *Map) Txn(ctx context.Context) *Txn { return &Txn{m: m, ctx: ctx} }

// If adds conditions (all must hold).
func (t *Txn) If(cmps ...Cmp) *Txn {
	for _, c := range cmps {
		t.cmps = append(t.cmps, c.c)
	}
	return t
}

// Then adds the writes applied when every condition holds.
func (t *Txn) Then(ops ...Op) *Txn {
	for _, o := range ops {
		t.then = append(t.then, o.w)
	}
	return t
}

// Else adds the writes applied when a condition fails.
func (t *Txn) Else(ops ...Op) *Txn {
	for _, o := range ops {
		t.els = append(t.els, o.w)
	}
	return t
}

// Commit runs the transaction. succeeded reports which branch applied;
// version is the transaction's Raft index (the version of what it wrote).
func (t *Txn) Commit() (succeeded bool, version uint64, err error) {
	var keys [][]byte
	for _, c := range t.cmps {
		keys = append(keys, c.Key)
	}
	for _, w := range append(append([]*gridpb.TxnWrite(nil), t.then...), t.els...) {
		if err := t.m.checkWrite(w.Key, w.Value); err != nil {
			return false, 0, err
		}
		if err := checkTTL(w.TtlNanos); err != nil {
			return false, 0, err
		}
		keys = append(keys, w.Key)
	}
	if len(keys) == 0 {
		return false, 0, fmt.Errorf("%w: empty transaction", grid.ErrBadRequest)
	}
	part := -1
	for _, k := range keys {
		if err := t.m.checkKey(k); err != nil {
			return false, 0, err
		}
		p := t.m.partition(k)
		if part >= 0 && p != part {
			return false, 0, fmt.Errorf("%w: transaction keys span partitions; give related keys one {hash tag}", grid.ErrBadRequest)
		}
		part = p
	}
	fence, err := fenceOnly("a transaction (give each put its own TTL)", t.opts)
	if err != nil {
		return false, 0, err
	}
	req := &gridpb.TxnRequest{Header: t.m.header(), Compares: t.cmps, ThenOps: t.then, ElseOps: t.els, Fence: fence}
	err = t.m.c.run(t.ctx, "txn", t.m.c.newPicker(part, true), true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewKVClient(cc).Txn(ctx, req, opts...)
		if err != nil {
			return err
		}
		succeeded, version = r.GetSucceeded(), r.GetVersion()
		return nil
	})
	return succeeded, version, err
}
