package node

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// requestSlack is what a request may carry beyond the keys and values its
// limits count: map names, headers, fences, field tags and lengths.
const requestSlack = 64 << 10

// requestLimits are the receive limits of a node's methods, in bytes of
// one request message: what the node's grid.Limits let a legitimate
// request carry, plus slack.
type requestLimits struct {
	base int // every method not named below: one write (a value, its key) or one restore batch
	txn  int // KV.Txn: compares and each of two branches up to the value limit, keys included
}

func newRequestLimits(l grid.Limits) requestLimits {
	base := max(l.MaxValueBytes+l.MaxKeyBytes, l.MaxRestoreBatch()) + requestSlack
	// Every op's framing (tags, lengths, crc, ttl: under 64 bytes) on top.
	return requestLimits{base: base, txn: 3*l.MaxValueBytes + maxTxnOps*64 + requestSlack}
}

// of is method's receive limit.
func (r requestLimits) of(method string) int {
	switch {
	case strings.HasPrefix(method, raftMethods):
		return replication.MaxRaftMessageBytes
	case method == gridpb.KV_Txn_FullMethodName:
		return r.txn
	}
	return r.base
}

// server is the receive limit of the gRPC server of every service but
// Raft's: the largest request any of them takes.
func (r requestLimits) server() int { return max(r.base, r.txn) }

// check refuses a request larger than its method takes. The server's own
// limit refused anything larger than server() before reading it; this
// holds each method to its own.
func (r requestLimits) check(method string, req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if size, limit := proto.Size(m), r.of(method); size > limit {
		return fmt.Errorf("%w: a %s request of %d bytes; this node takes at most %d", grid.ErrRequestTooLarge, method, size, limit)
	}
	return nil
}
