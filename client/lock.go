package client

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Lock errors, re-exported from grid.
var (
	ErrLockHeld        = grid.ErrLockHeld
	ErrLockNotHeld     = grid.ErrLockNotHeld
	ErrStaleToken      = grid.ErrStaleToken
	ErrInvalidLockName = grid.ErrInvalidLockName
	ErrInvalidLeaseTTL = grid.ErrInvalidLeaseTTL
	ErrInvalidFence    = grid.ErrInvalidFence
)

// LockOption changes how Lock and TryLock acquire a lock.
type LockOption func(*lockOptions)

type lockOptions struct{ ttl time.Duration }

// WithLeaseTTL sets the lease of the lock (grid.DefaultLeaseTTL, 5 s, by
// default; grid.MinLeaseTTL..grid.MaxLeaseTTL). A holder that stops renewing
// (it crashed, paused or lost the network) keeps the lock at most this long;
// the handle renews every third of it.
func WithLeaseTTL(d time.Duration) LockOption { return func(o *lockOptions) { o.ttl = d } }

// WithFence guards a Put with a fencing token: the partition of the key
// refuses the write with ErrStaleToken, and changes nothing, if it has
// already accepted a write fenced with the same name and a higher token.
// Use the lock's name and l.Token() (or l.Fence()). Keys that must be
// guarded together should share a {hash tag}: each partition keeps its own
// record of the highest token it has accepted.
func WithFence(name string, token uint64) WriteOption {
	return func(r *gridpb.PutRequest) { r.Fence = &gridpb.Fence{Name: name, Token: token} }
}

// Lock is a held distributed lock: a lease in the Raft group of the lock's
// partition, renewed by a goroutine the handle owns until Unlock, or until
// the lease is lost.
//
// What is guaranteed:
//   - Tokens: every grant of a lock has a fencing token (the Raft index of
//     the entry that granted it) greater than every earlier grant's, across
//     leader changes, restarts and snapshots.
//   - Fenced effects: a partition accepts writes fenced with a lock's name in
//     token order; once it has accepted token T it refuses every token below
//     T. So writes made with WithFence by two holders never interleave at
//     one partition, even if both believe they hold the lock.
//   - Liveness: a holder that crashes, pauses or is cut off loses the lock
//     when its lease ends (by the partition leader's clock), and another
//     client can then take it.
//
// What is not:
//   - Mutual exclusion of beliefs: a holder that is paused (GC, SIGSTOP,
//     swapped out) past its lease still believes it holds the lock until
//     it runs again and notices; meanwhile another client may hold it. Only
//     fenced writes are protected from it; unfenced writes, and effects
//     outside the grid, are not.
//   - Lease timing: leases are measured by the clocks of the partition's
//     successive leaders. A leader change to a node whose clock is behind
//     lengthens a lease; one ahead shortens it. Lost() closes by the
//     client's own clock, a lease after the last renewal was sent, which is
//     only as accurate as the clocks agree in rate.
//   - Fences are not authenticated: any client can send any token, and a
//     made-up high token locks every real holder out of that partition.
//   - A fence guards one partition: writes to keys in different partitions
//     are each ordered by token at their partition, not with each other.
type Lock struct {
	c     *Client
	name  string
	owner []byte
	token uint64
	ttl   time.Duration
	part  int

	lost     chan struct{}
	lostOnce sync.Once
	stop     context.CancelFunc // stops the keepalive goroutine
	done     chan struct{}      // closed when it has returned

	mu       sync.Mutex
	unlocked bool
}

// Lock acquires the named lock, waiting while another client holds it (until
// the holder unlocks or its lease ends), or until ctx ends. A waiter asks
// again (one Raft entry each time) after 20 ms, doubling up to 500 ms, and
// never long after the holder's lease would end.
func (c *Client) Lock(ctx context.Context, name string, opts ...LockOption) (*Lock, error) {
	return c.lock(ctx, name, true, opts)
}

// TryLock acquires the named lock if it is free now, and otherwise fails at
// once with ErrLockHeld.
func (c *Client) TryLock(ctx context.Context, name string, opts ...LockOption) (*Lock, error) {
	return c.lock(ctx, name, false, opts)
}

// Lock polls with backoff between these bounds while the lock is held.
const (
	lockPollMin = 20 * time.Millisecond
	lockPollMax = 500 * time.Millisecond
	// maxAmbiguousTries bounds how often TryLock asks again after an
	// ambiguous outcome (Lock asks until its context ends).
	maxAmbiguousTries = 3
)

func (c *Client) lock(ctx context.Context, name string, wait bool, opts []LockOption) (*Lock, error) {
	o := lockOptions{ttl: grid.DefaultLeaseTTL}
	for _, opt := range opts {
		opt(&o)
	}
	if err := errors.Join(grid.ValidateLockName(name), grid.ValidateLeaseTTL(o.ttl)); err != nil {
		return nil, err
	}
	owner := make([]byte, grid.LockOwnerLen)
	if _, err := rand.Read(owner); err != nil {
		return nil, fmt.Errorf("client: random lock owner: %w", err)
	}
	l := &Lock{c: c, name: name, owner: owner, ttl: o.ttl, part: grid.LockPartition(name, c.numPartitions()),
		lost: make(chan struct{}), done: make(chan struct{})}
	pause := lockPollMin
	ambiguous := 0
	for {
		sent := time.Now()
		// No request id: an acquire is idempotent for its owner (a retry
		// gets the same token), and waiters poll, which would otherwise
		// leave a deduplication record per poll.
		req := &gridpb.AcquireLockRequest{Name: name, Owner: owner, TtlNs: int64(o.ttl)}
		var resp *gridpb.AcquireLockResponse
		err := c.run(ctx, "lock", c.newPicker(l.part, true), true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
			r, err := gridpb.NewLockClient(cc).Acquire(ctx, req, opts...)
			resp = r
			return err
		})
		switch {
		case err == nil && resp.GetAcquired():
			l.token = resp.GetToken()
			kctx, stop := context.WithCancel(context.Background())
			l.stop = stop
			go l.keepalive(kctx, sent.Add(o.ttl)) // owned: Unlock stops it; it ends by itself once the lease is lost
			return l, nil
		case err == nil && !wait:
			return nil, fmt.Errorf("client: lock %q: %w (token %d, lease ends in %v)", name, grid.ErrLockHeld,
				resp.GetToken(), time.Duration(resp.GetHolderRemainingNs()).Round(time.Millisecond))
		case err == nil:
			// Held: wait, but not past the holder's lease end.
			d := min(jitter(pause), time.Duration(resp.GetHolderRemainingNs())+lockPollMin)
			pause = min(2*pause, lockPollMax)
			if err := sleep(ctx, d); err != nil {
				return nil, fmt.Errorf("client: lock %q: %w", name, err)
			}
		case errors.Is(err, grid.ErrAmbiguous) && ctx.Err() == nil:
			// The grant may have happened. Asking again with the same
			// owner is idempotent: it returns the grant's token. TryLock
			// asks again a few times only; both pause first.
			if ambiguous++; !wait && ambiguous > maxAmbiguousTries {
				return nil, fmt.Errorf("client: lock %q: %w", name, err)
			}
			if err := sleep(ctx, jitter(pause)); err != nil {
				return nil, fmt.Errorf("client: lock %q: %w", name, err)
			}
			pause = min(2*pause, lockPollMax)
		default:
			return nil, err
		}
	}
}

// Name is the lock's name.
func (l *Lock) Name() string { return l.name }

// Token is the fencing token of this acquisition: higher than the token of
// every earlier acquisition of the same lock.
func (l *Lock) Token() uint64 { return l.token }

// Fence is WithFence(l.Name(), l.Token()).
func (l *Lock) Fence() WriteOption { return WithFence(l.name, l.token) }

// Lost is closed once the handle knows it no longer holds the lock: the
// cluster refused a renewal, the lease ran out before a renewal got
// through (by this process's clock), the client was closed, or Unlock was
// called. A process that is paused cannot notice in time; that is what
// fencing tokens are for.
func (l *Lock) Lost() <-chan struct{} { return l.lost }

func (l *Lock) markLost() { l.lostOnce.Do(func() { close(l.lost) }) }

// keepalive renews the lease every third of its ttl. deadline is when the
// lease ends at the latest, by this process's clock: a ttl after the last
// successful renewal was sent (the leader stamps the renewal later still).
func (l *Lock) keepalive(ctx context.Context, deadline time.Time) {
	defer close(l.done)
	interval := l.ttl / 3
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		err := l.renew(rctx)
		cancel()
		switch {
		case err == nil:
			deadline = sent.Add(l.ttl)
			timer.Reset(interval)
		case ctx.Err() != nil:
			return // Unlock
		case errors.Is(err, grid.ErrLockNotHeld), errors.Is(err, grid.ErrClosed), !time.Now().Before(deadline):
			l.c.log.Warn("client: lock lost", "lock", l.name, "token", l.token, "err", err)
			l.markLost()
			return
		default: // try again soon, while the lease lasts
			timer.Reset(max(0, min(interval/4, time.Until(deadline))))
		}
	}
}

func (l *Lock) renew(ctx context.Context) error {
	// No request id: renewing twice is harmless, and a record per renewal
	// would pile up.
	req := &gridpb.RenewLockRequest{Name: l.name, Owner: l.owner, Token: l.token}
	return l.c.run(ctx, "renew lock", l.c.newPicker(l.part, true), true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		_, err := gridpb.NewLockClient(cc).Renew(ctx, req, opts...)
		return err
	})
}

// Unlock stops renewing and releases the lock. It fails with ErrLockNotHeld
// if the lease was already lost (or Unlock was called before); if it fails
// otherwise (say, ErrAmbiguous), the lock is free at the latest when its
// lease ends.
func (l *Lock) Unlock(ctx context.Context) error {
	l.mu.Lock()
	again := l.unlocked
	l.unlocked = true
	l.mu.Unlock()
	if again {
		return fmt.Errorf("client: unlock %q: %w: already unlocked", l.name, grid.ErrLockNotHeld)
	}
	l.stop()
	<-l.done
	select {
	case <-l.lost:
		return fmt.Errorf("client: unlock %q: %w: the lease was lost", l.name, grid.ErrLockNotHeld)
	default:
	}
	defer l.markLost()
	req := &gridpb.ReleaseLockRequest{ClientId: l.c.clientID, Seq: l.c.seq.Add(1), Name: l.name, Owner: l.owner, Token: l.token}
	return l.c.run(ctx, "unlock", l.c.newPicker(l.part, true), true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		_, err := gridpb.NewLockClient(cc).Release(ctx, req, opts...)
		return err
	})
}
