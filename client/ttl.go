package client

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// WithTTL makes the written key expire d after the partition leader
// proposes the write: the leader's clock fixes the expiry, the same on
// every replica, and a later leader honours it. From then on the key is
// missing to every read, compare-and-swap and transaction compare; the
// partition leader deletes it through Raft shortly after (watchers see an
// EventExpire), unless it was rewritten meanwhile. d must be in
// grid.MinTTL..grid.MaxTTL; a write with any other TTL fails with
// ErrBadRequest and writes nothing. Overwriting a key without WithTTL
// clears its expiry.
func WithTTL(d time.Duration) WriteOption {
	return func(r *gridpb.PutRequest) { r.TtlNanos = int64(d) }
}

// writeOpts reads what the options set (for calls other than Put that take
// write options: a TTL and a fence), and checks the TTL.
func writeOpts(opts []WriteOption) (*gridpb.PutRequest, error) {
	var r gridpb.PutRequest
	for _, o := range opts {
		o(&r)
	}
	return &r, checkTTL(r.TtlNanos)
}

// fenceOnly reads the options of a call that takes a fence but no TTL.
func fenceOnly(call string, opts []WriteOption) (*gridpb.Fence, error) {
	r, err := writeOpts(opts)
	if err != nil {
		return nil, err
	}
	if r.TtlNanos != 0 {
		return nil, fmt.Errorf("%w: %s takes no TTL", grid.ErrBadRequest, call)
	}
	return r.Fence, nil
}

func checkTTL(nanos int64) error { return grid.ValidateTTL(nanos) }

// TTL gives a transaction's put a time to live (see WithTTL).
func (o Op) TTL(d time.Duration) Op {
	w := proto.CloneOf(o.w)
	w.TtlNanos = int64(d)
	return Op{w}
}

// expiryTime converts a node's expiry (unix nanoseconds, 0: none).
func expiryTime(nanos int64) time.Time {
	if nanos == 0 {
		return time.Time{}
	}
	return time.Unix(0, nanos)
}
