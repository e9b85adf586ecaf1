package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// attemptFunc sends a request once to t over cc. It must pass opts on to the
// gRPC call: they tell the retry loop whether the request reached a node.
type attemptFunc func(ctx context.Context, cc *grpc.ClientConn, t target, opts ...grpc.CallOption) error

// picker chooses the node for each attempt of one request. It is owned by
// that request's goroutine.
type picker struct {
	c      *Client
	part   int  // -1: any node will do (admin calls)
	leader bool // the request must reach the partition leader
	start  int  // where a stale read starts among the replicas
	prefer target
	long   bool            // a stream: no default deadline (see RetryPolicy.OpTimeout)
	avoid  map[string]bool // failed in this round
	tried  map[string]bool // attempted at all by this request
}

func (c *Client) anyNode() *picker { return c.newPicker(-1, false) }

// stream marks pk's request as a long stream, bounded only by its context.
func (pk *picker) stream() *picker {
	pk.long = true
	return pk
}

func (c *Client) newPicker(part int, leader bool) *picker {
	pk := &picker{c: c, part: part, leader: leader, avoid: map[string]bool{}, tried: map[string]bool{}}
	if !leader {
		pk.start = int(c.spread.Add(1) % (1 << 16))
	}
	return pk
}

// candidates lists where the request may go, best first: a hinted node, the
// cached leader, then the replicas in placement order (rotated for stale
// reads, so that they spread over the replicas).
func (pk *picker) candidates() []target {
	c := pk.c
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []target
	seen := map[string]bool{}
	add := func(t target) {
		if t.addr != "" && !seen[t.addr] {
			seen[t.addr] = true
			out = append(out, t)
		}
	}
	add(pk.prefer)
	if pk.part < 0 {
		if c.table != nil {
			for _, n := range c.table.Nodes {
				add(target{id: n.ID, addr: n.Addr})
			}
		}
		for _, a := range c.seeds {
			add(target{addr: a})
		}
		return out
	}
	if c.table == nil || pk.part >= len(c.table.Partitions) {
		return out
	}
	if pk.leader {
		add(c.leaders[pk.part])
	}
	reps := c.table.Partitions[pk.part].Replicas
	for i := range reps {
		id := reps[(i+pk.start)%len(reps)]
		add(target{id: id, addr: c.addrs[id]})
	}
	return out
}

// next returns the best candidate that has not failed in this round. When
// every candidate has failed, a new round starts and next reports it.
func (pk *picker) next() (t target, newRound, ok bool) {
	cands := pk.candidates()
	if len(cands) == 0 {
		return target{}, false, false
	}
	for _, t := range cands {
		if !pk.avoid[t.addr] {
			return t, false, true
		}
	}
	clear(pk.avoid)
	return cands[0], true, true
}

// verdict is what the retry loop does after a failed attempt.
type verdict int

const (
	giveUp     verdict = iota
	followHint         // the node named the leader: go there
	tryOther           // go to another replica after a pause
	refetch            // the table is stale: refetch it, then try another replica
)

// judge classifies a failed attempt's error (already mapped by FromStatus).
// unsure reports that a write may have been applied if the request reached a
// node.
func judge(err error) (v verdict, hint *grid.NotLeaderError, unsure bool) {
	var nl *grid.NotLeaderError
	switch {
	case errors.As(err, &nl):
		if nl.LeaderID != "" || nl.LeaderAddr != "" {
			return followHint, nl, false
		}
		return tryOther, nil, false
	case errors.Is(err, grid.ErrNotLeader), errors.Is(err, grid.ErrNoLeader), errors.Is(err, grid.ErrClosed),
		errors.Is(err, grid.ErrNodeRetired):
		return tryOther, nil, false // refused before proposing
	case errors.Is(err, grid.ErrPartitionNotHere):
		return refetch, nil, false
	case errors.Is(err, grid.ErrAmbiguous):
		return tryOther, nil, true
	}
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return giveUp, nil, false // raised by the client itself
	}
	switch se.GRPCStatus().Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Unknown:
		// The connection broke or the node timed out: the request may
		// have got through.
		return tryOther, nil, true
	case codes.Canceled:
		return giveUp, nil, true
	}
	return giveUp, nil, false
}

// clusterAttemptTimeout bounds one attempt of a cluster-wide request (maps,
// table, nodes, explain) when the retry policy sets no bound: such a
// request is answered quickly by a healthy node, and a paused or wedged node
// must not hold the caller.
const clusterAttemptTimeout = 10 * time.Second

// runCluster is run for a request any node can answer, each attempt bounded.
func (c *Client) runCluster(ctx context.Context, op string, write bool, fn attemptFunc) error {
	return c.run(ctx, op, c.anyNode(), write, func(ctx context.Context, cc *grpc.ClientConn, t target, opts ...grpc.CallOption) error {
		if c.opts.retry.AttemptTimeout == 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, clusterAttemptTimeout)
			defer cancel()
		}
		return fn(ctx, cc, t, opts...)
	})
}

// run sends one logical request, retrying as the errors allow. For a write
// (write=true) every attempt carries the same request, hence the same
// (client id, seq), so the node applies it at most once; if an attempt may
// have been applied and the request still fails, the error is an
// *AmbiguousError.
func (c *Client) run(ctx context.Context, op string, pk *picker, write bool, fn attemptFunc) error {
	pol := c.opts.retry
	if _, ok := ctx.Deadline(); !ok && pol.OpTimeout > 0 && !pk.long {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, pol.OpTimeout)
		defer cancel()
	}
	pause := pol.BaseBackoff
	var (
		lastErr   error
		attempts  int
		ambiguous bool
		exhausted bool
	)
	for {
		if err := ctx.Err(); err != nil {
			lastErr = joinCtx(err, lastErr)
			break
		}
		t, newRound, ok := pk.next()
		if ok && newRound {
			// Every candidate has failed once: the table may be stale.
			c.refreshTable(ctx)
			t, _, ok = pk.next()
		}
		if !ok {
			lastErr = fmt.Errorf("no node known for partition %d: %w", pk.part, grid.ErrPartitionNotHere)
			if pk.part < 0 {
				lastErr = errors.New("no node address known")
			}
			break
		}
		cc, err := c.conn(t.addr)
		if err != nil {
			lastErr = err
			break
		}
		attempts++
		pk.tried[t.addr] = true
		var p peer.Peer
		actx, cancel := ctx, context.CancelFunc(func() {})
		if pol.AttemptTimeout > 0 {
			actx, cancel = context.WithTimeout(ctx, pol.AttemptTimeout)
		}
		err = fn(actx, cc, t, grpc.Peer(&p))
		cancel()
		if err == nil {
			return nil
		}
		err = gridpb.FromStatus(err)
		lastErr = fmt.Errorf("%s: %w", t.addr, err)
		v, hint, unsure := judge(err)
		if write && unsure && p.Addr != nil {
			ambiguous = true
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			lastErr = joinCtx(ctxErr, lastErr)
			break
		}
		if v == giveUp {
			break
		}
		if pol.MaxAttempts > 0 && attempts >= pol.MaxAttempts {
			exhausted = true
			break
		}

		wait := true
		switch v {
		case followHint:
			ht := c.resolve(hint)
			if ht.addr == "" || ht.addr == t.addr {
				pk.avoid[t.addr] = true
				c.forgetLeader(pk.part, t)
				break
			}
			c.setLeader(pk.part, ht)
			pk.prefer = ht
			delete(pk.avoid, ht.addr) // the hint is fresher than our failure
			wait = pk.tried[ht.addr]  // going round in circles: slow down
		case tryOther:
			pk.avoid[t.addr] = true
			c.forgetLeader(pk.part, t)
		case refetch:
			pk.avoid[t.addr] = true
			c.forgetLeader(pk.part, t)
			c.refreshTable(ctx)
		}
		c.log.Debug("client: retrying", "op", op, "attempt", attempts, "node", t.addr, "err", err)
		if !wait {
			continue
		}
		if err := sleep(ctx, jitter(pause)); err != nil {
			lastErr = joinCtx(err, lastErr)
			break
		}
		pause = min(2*pause, pol.MaxBackoff)
	}

	switch {
	case write && ambiguous:
		return &AmbiguousError{Op: op, Attempts: attempts, Err: lastErr}
	case exhausted:
		return fmt.Errorf("client: %s: giving up after %d attempts: %w", op, attempts, lastErr)
	}
	return fmt.Errorf("client: %s: %w", op, lastErr)
}

// joinCtx reports a context's end along with the last attempt's error.
func joinCtx(ctxErr, last error) error {
	if last == nil || errors.Is(last, ctxErr) {
		return ctxErr
	}
	return fmt.Errorf("%w (last attempt: %w)", ctxErr, last)
}

// jitter returns a duration between d/2 and d.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
