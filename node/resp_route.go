package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// kvCalls is what the Redis front door asks of a partition's replica: the
// KV service as gRPC clients call it. A connection to another node is one
// (gridpb.KVClient); so is this node's own service (localKV), called
// without going through gRPC.
type kvCalls interface {
	Get(context.Context, *gridpb.GetRequest, ...grpc.CallOption) (*gridpb.GetResponse, error)
	Put(context.Context, *gridpb.PutRequest, ...grpc.CallOption) (*gridpb.PutResponse, error)
	Delete(context.Context, *gridpb.DeleteRequest, ...grpc.CallOption) (*gridpb.DeleteResponse, error)
	CompareAndSwap(context.Context, *gridpb.CompareAndSwapRequest, ...grpc.CallOption) (*gridpb.CompareAndSwapResponse, error)
	Txn(context.Context, *gridpb.TxnRequest, ...grpc.CallOption) (*gridpb.TxnResponse, error)
	Scan(context.Context, *gridpb.ScanRequest, ...grpc.CallOption) (grpc.ServerStreamingClient[gridpb.ScanResponse], error)
}

var (
	_ kvCalls = gridpb.KVClient(nil)
	_ kvCalls = localKV{}
)

// localKV calls this node's KV service directly. The caller was
// authorized by the front door; the service validates as for any call.
type localKV struct{ s *service }

func (l localKV) Get(ctx context.Context, req *gridpb.GetRequest, _ ...grpc.CallOption) (*gridpb.GetResponse, error) {
	return l.s.Get(ctx, req)
}

func (l localKV) Put(ctx context.Context, req *gridpb.PutRequest, _ ...grpc.CallOption) (*gridpb.PutResponse, error) {
	return l.s.Put(ctx, req)
}

func (l localKV) Delete(ctx context.Context, req *gridpb.DeleteRequest, _ ...grpc.CallOption) (*gridpb.DeleteResponse, error) {
	return l.s.Delete(ctx, req)
}

func (l localKV) CompareAndSwap(ctx context.Context, req *gridpb.CompareAndSwapRequest, _ ...grpc.CallOption) (*gridpb.CompareAndSwapResponse, error) {
	return l.s.CompareAndSwap(ctx, req)
}

func (l localKV) Txn(ctx context.Context, req *gridpb.TxnRequest, _ ...grpc.CallOption) (*gridpb.TxnResponse, error) {
	return l.s.Txn(ctx, req)
}

func (l localKV) Scan(ctx context.Context, req *gridpb.ScanRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[gridpb.ScanResponse], error) {
	page := &scanPage{ctx: ctx}
	if err := l.s.Scan(req, page); err != nil {
		return nil, err
	}
	return page, nil
}

// scanPage carries the one page KV.Scan sends from the service to its
// local caller: the service sees a server stream (Send, Context), the
// caller a client stream (Recv). Nothing else of either is called.
type scanPage struct {
	grpc.ServerStream
	ctx  context.Context
	resp *gridpb.ScanResponse
}

func (p *scanPage) Send(r *gridpb.ScanResponse) error { p.resp = r; return nil }

func (p *scanPage) Context() context.Context { return p.ctx }

func (p *scanPage) Recv() (*gridpb.ScanResponse, error) {
	r := p.resp
	if r == nil {
		return nil, errors.New("node: scan sent no page")
	}
	p.resp = nil
	return r, nil
}

func (p *scanPage) Header() (metadata.MD, error) { return nil, nil }
func (p *scanPage) Trailer() metadata.MD         { return nil }
func (p *scanPage) CloseSend() error             { return nil }

// How a front-door call reaches a partition.
type respRoute int

const (
	routeRead  respRoute = iota // linearizable read: the leader
	routeStale                  // stale read: this node's replica, else any
	routeWrite                  // a write: the leader; retried with the same request id
)

// respOpTimeout bounds one command's calls to one partition, elections
// and retries included; respAttemptTimeout one attempt at one node.
const (
	respOpTimeout      = 10 * time.Second
	respAttemptTimeout = 5 * time.Second
)

// at runs call at a replica of partition p as route asks, following
// not-leader hints and waiting out elections. A write's every attempt
// carries the same request (client id, seq), so it is applied at most once;
// if an attempt may have been applied and none is known to have been, the
// error wraps grid.ErrAmbiguous.
func (r *respServer) at(ctx context.Context, p int, route respRoute, call func(context.Context, kvCalls) error) error {
	ctx, cancel := context.WithTimeout(ctx, respOpTimeout)
	defer cancel()
	pause := 20 * time.Millisecond
	unsure := false
	var lastErr error = fmt.Errorf("%w: partition %d", grid.ErrNoLeader, p)
	for {
		hint := ""
		for _, addr := range r.candidates(p, route) {
			for tried := map[string]bool{}; addr != "" && !tried[addr]; {
				tried[addr] = true
				err := r.attempt(ctx, p, addr, call)
				if err == nil {
					if route != routeStale {
						r.leaders.Store(p, addr)
					}
					return nil
				}
				lastErr = err
				var nl *grid.NotLeaderError
				switch {
				case errors.As(err, &nl):
					addr, hint = nl.LeaderAddr, nl.LeaderAddr
				case errors.Is(err, grid.ErrNotLeader), errors.Is(err, grid.ErrNoLeader), errors.Is(err, grid.ErrClosed),
					errors.Is(err, grid.ErrNodeRetired), errors.Is(err, grid.ErrPartitionNotHere):
					addr = "" // refused before anything was proposed
				case mayHaveApplied(err):
					unsure = unsure || route == routeWrite
					addr = ""
				default:
					return err // a definite answer: bad input, unknown map, refused
				}
			}
		}
		r.leaders.Delete(p)
		if !pauseFor(ctx, pause) {
			break
		}
		if hint == "" {
			pause = min(2*pause, 500*time.Millisecond)
		}
	}
	if unsure {
		return fmt.Errorf("%w: partition %d: %w", grid.ErrAmbiguous, p, lastErr)
	}
	return fmt.Errorf("partition %d: no leader answered within %v, nothing was done: %w", p, respOpTimeout, lastErr)
}

// mayHaveApplied reports whether a failed attempt may still have been
// applied: it timed out, its connection broke, or leadership was lost
// after it was proposed.
func mayHaveApplied(err error) bool {
	if errors.Is(err, grid.ErrAmbiguous) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Unknown, codes.Canceled:
		return true
	}
	return false
}

// candidates lists the addresses to try for partition p, best first: this
// node when it leads (or, for a stale read, holds a replica), the leader
// it knows or last reached, then every replica.
func (r *respServer) candidates(p int, route respRoute) []string {
	var out []string
	add := func(a string) {
		for _, x := range out {
			if x == a {
				return
			}
		}
		if a != "" {
			out = append(out, a)
		}
	}
	if g, ok := r.n.host.Group(replication.GroupID(p)); ok {
		if route == routeStale || g.IsLeader() {
			add(r.n.addr)
		}
		_, leader := g.Leader()
		add(leader)
	}
	if a, ok := r.leaders.Load(p); ok {
		add(a.(string))
	}
	t := r.n.table()
	if p < len(t.Partitions) {
		for _, id := range t.Partitions[p].Replicas {
			if nd, ok := t.Node(id); ok {
				add(nd.Addr)
			}
		}
	}
	return out
}

// attempt runs call once at addr: this node's service when addr is this
// node's, else over the node's connection to addr.
func (r *respServer) attempt(ctx context.Context, p int, addr string, call func(context.Context, kvCalls) error) error {
	actx, cancel := context.WithTimeout(ctx, respAttemptTimeout)
	defer cancel()
	if addr == r.n.addr {
		return call(actx, localKV{s: r.svc})
	}
	cc, err := r.n.conns.get(addr)
	if err != nil {
		return err
	}
	return gridpb.FromStatus(call(actx, gridpb.NewKVClient(cc)))
}

// pauseFor waits d, or less if ctx ends first (then false).
func pauseFor(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
