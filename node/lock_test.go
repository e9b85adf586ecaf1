package node_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// tryLock takes a free lock, retrying while the cluster elects leaders.
func tryLock(t *testing.T, c *client.Client, name string, opts ...client.LockOption) *client.Lock {
	t.Helper()
	var l *client.Lock
	retry(t, 20*time.Second, func(ctx context.Context) error {
		var err error
		l, err = c.TryLock(ctx, name, opts...)
		return err
	})
	return l
}

func dialAgain(t *testing.T, e *embedded) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), e.addrs()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestLockExclusionFencingAndExpiry(t *testing.T) {
	e, c := startWithMaps(t, []string{"res"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c2 := dialAgain(t, e)
	m := c.Map("res")
	key := []byte("{job}:state")

	l1 := tryLock(t, c, "job", client.WithLeaseTTL(time.Second))
	if _, err := c2.TryLock(ctx, "job"); !errors.Is(err, client.ErrLockHeld) {
		t.Fatalf("TryLock of a held lock: %v, want ErrLockHeld", err)
	}
	if _, err := m.Put(ctx, key, []byte("by l1"), l1.Fence()); err != nil {
		t.Fatalf("fenced write by the holder: %v", err)
	}

	// A waiter gets the lock as soon as the holder unlocks, with a higher
	// token.
	got := make(chan *client.Lock, 1)
	go func() {
		l, err := c2.Lock(ctx, "job", client.WithLeaseTTL(time.Second))
		if err != nil {
			t.Errorf("Lock while held: %v", err)
		}
		got <- l
	}()
	if err := l1.Unlock(ctx); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	<-l1.Lost() // an unlocked handle holds nothing
	l2 := <-got
	if l2 == nil {
		t.FailNow()
	}
	if l2.Token() <= l1.Token() {
		t.Fatalf("tokens %d then %d: not increasing", l1.Token(), l2.Token())
	}
	if _, err := m.Put(ctx, key, []byte("by l2"), l2.Fence()); err != nil {
		t.Fatalf("fenced write by the new holder: %v", err)
	}
	// The old holder's token is now stale: refused, and nothing changes.
	_, ver, _ := m.Get(ctx, key)
	if _, err := m.Put(ctx, key, []byte("late l1"), l1.Fence()); !errors.Is(err, client.ErrStaleToken) || status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("stale fenced write: %v (%v), want ErrStaleToken (FailedPrecondition)", err, status.Code(err))
	}
	// So are its fenced deletes, compare-and-swaps (with the right version)
	// and transactions; a bad combination is refused by the client.
	for name, call := range map[string]func() error{
		"delete":             func() error { _, err := m.Delete(ctx, key, l1.Fence()); return err },
		"compare-and-swap":   func() error { _, _, err := m.CompareAndSwap(ctx, key, ver, []byte("late l1"), l1.Fence()); return err },
		"compare-and-delete": func() error { _, _, err := m.CompareAndDelete(ctx, key, ver, l1.Fence()); return err },
		"txn": func() error {
			_, _, err := m.Txn(ctx).With(l1.Fence()).Then(client.OpPut(key, []byte("late l1"))).Commit()
			return err
		},
	} {
		if err := call(); !errors.Is(err, client.ErrStaleToken) {
			t.Fatalf("stale fenced %s: %v, want ErrStaleToken", name, err)
		}
	}
	if _, err := m.Delete(ctx, key, client.WithTTL(time.Second)); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("delete with a TTL: %v, want ErrBadRequest", err)
	}
	if v, ver2, err := m.Get(ctx, key); err != nil || string(v) != "by l2" || ver2 != ver {
		t.Fatalf("after refused writes: %q v%d %v, want %q v%d", v, ver2, err, "by l2", ver)
	}
	if ok, _, err := m.Txn(ctx).With(l2.Fence()).If(client.VersionIs(key, ver)).Then(client.OpPut(key, []byte("txn by l2"))).Commit(); err != nil || !ok {
		t.Fatalf("fenced txn by the holder: %v %v", ok, err)
	}
	if err := l2.Unlock(ctx); err != nil {
		t.Fatal(err)
	}

	// A holder that dies (its client closes and stops renewing) keeps the
	// lock until its lease ends, then a waiter takes it.
	c3 := dialAgain(t, e)
	l3 := tryLock(t, c3, "crash", client.WithLeaseTTL(500*time.Millisecond))
	c3.Close()
	select {
	case <-l3.Lost():
	case <-ctx.Done():
		t.Fatal("Lost not closed after the client closed")
	}
	l4, err := c.Lock(ctx, "crash", client.WithLeaseTTL(time.Second))
	if err != nil {
		t.Fatalf("Lock after the holder died: %v", err)
	}
	if l4.Token() <= l3.Token() {
		t.Fatalf("tokens %d then %d", l3.Token(), l4.Token())
	}
	// The handle renews: it still holds the lock several leases later.
	time.Sleep(2500 * time.Millisecond)
	select {
	case <-l4.Lost():
		t.Fatal("a renewed lock was lost")
	default:
	}
	if _, err := c2.TryLock(ctx, "crash"); !errors.Is(err, client.ErrLockHeld) {
		t.Fatalf("renewed lock: TryLock by another: %v, want ErrLockHeld", err)
	}
	if err := l4.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestLockBadInput(t *testing.T) {
	e, c := startWithMaps(t, []string{"res"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := tryLock(t, c, "held")
	defer l.Unlock(ctx)
	m := c.Map("res")
	retry(t, 20*time.Second, func(ctx context.Context) error {
		_, err := m.Put(ctx, []byte("k"), []byte("v"), client.WithFence("held", l.Token()))
		return err
	})

	long := strings.Repeat("x", grid.MaxLockNameLen+1)
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"empty name", func() error { _, err := c.TryLock(ctx, ""); return err }, client.ErrInvalidLockName},
		{"oversized name", func() error { _, err := c.Lock(ctx, long); return err }, client.ErrInvalidLockName},
		{"control character in name", func() error { _, err := c.Lock(ctx, "a\nb"); return err }, client.ErrInvalidLockName},
		{"zero ttl", func() error { _, err := c.Lock(ctx, "x", client.WithLeaseTTL(0)); return err }, client.ErrInvalidLeaseTTL},
		{"negative ttl", func() error { _, err := c.Lock(ctx, "x", client.WithLeaseTTL(-time.Second)); return err }, client.ErrInvalidLeaseTTL},
		{"fence token 0", func() error {
			_, err := m.Put(ctx, []byte("k"), []byte("evil"), client.WithFence("held", 0))
			return err
		}, client.ErrInvalidFence},
		{"fence without a name", func() error { _, err := m.Put(ctx, []byte("k"), []byte("evil"), client.WithFence("", 99)); return err }, client.ErrInvalidFence},
		{"fence name too long", func() error {
			_, err := m.Put(ctx, []byte("k"), []byte("evil"), client.WithFence(long, 99))
			return err
		}, client.ErrInvalidFence},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}

	// Past the client's checks, straight to the nodes.
	var lcs []gridpb.LockClient
	for _, a := range e.addrs() {
		conn, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		lcs = append(lcs, gridpb.NewLockClient(conn))
	}
	// atLeader sends call to every node until one answers other than "not
	// the leader" or "outcome unknown" (leader balancing may move the
	// partition mid-call; every call here is refused or idempotent).
	atLeader := func(call func(ctx context.Context, lc gridpb.LockClient) error) error {
		var err error
		retry(t, 20*time.Second, func(ctx context.Context) error {
			for _, lc := range lcs {
				err = call(ctx, lc)
				if e := gridpb.FromStatus(err); !errors.Is(e, grid.ErrNotLeader) && !errors.Is(e, grid.ErrNoLeader) && !errors.Is(e, grid.ErrAmbiguous) {
					return nil
				}
			}
			return err
		})
		return err
	}
	owner := []byte("0123456789abcdef")
	for _, tc := range []struct {
		name string
		call func(ctx context.Context, lc gridpb.LockClient) error
		want error
		code codes.Code
	}{
		{"acquire with zero ttl", func(ctx context.Context, lc gridpb.LockClient) error {
			_, err := lc.Acquire(ctx, &gridpb.AcquireLockRequest{Name: "x", Owner: owner})
			return err
		}, grid.ErrInvalidLeaseTTL, codes.InvalidArgument},
		{"acquire with a short owner id", func(ctx context.Context, lc gridpb.LockClient) error {
			_, err := lc.Acquire(ctx, &gridpb.AcquireLockRequest{Name: "x", Owner: []byte("me"), TtlNs: int64(time.Second)})
			return err
		}, grid.ErrBadRequest, codes.InvalidArgument},
		{"acquire with an empty name", func(ctx context.Context, lc gridpb.LockClient) error {
			_, err := lc.Acquire(ctx, &gridpb.AcquireLockRequest{Owner: owner, TtlNs: int64(time.Second)})
			return err
		}, grid.ErrInvalidLockName, codes.InvalidArgument},
		{"release a lock held by another", func(ctx context.Context, lc gridpb.LockClient) error {
			_, err := lc.Release(ctx, &gridpb.ReleaseLockRequest{Name: "held", Owner: owner, Token: l.Token()})
			return err
		}, grid.ErrLockNotHeld, codes.FailedPrecondition},
		{"release a lock nobody holds", func(ctx context.Context, lc gridpb.LockClient) error {
			_, err := lc.Release(ctx, &gridpb.ReleaseLockRequest{Name: "free", Owner: owner, Token: 1})
			return err
		}, grid.ErrLockNotHeld, codes.FailedPrecondition},
		{"renew a lock held by another", func(ctx context.Context, lc gridpb.LockClient) error {
			_, err := lc.Renew(ctx, &gridpb.RenewLockRequest{Name: "held", Owner: owner, Token: l.Token()})
			return err
		}, grid.ErrLockNotHeld, codes.FailedPrecondition},
		{"release with token 0", func(ctx context.Context, lc gridpb.LockClient) error {
			_, err := lc.Release(ctx, &gridpb.ReleaseLockRequest{Name: "held", Owner: owner})
			return err
		}, grid.ErrBadRequest, codes.InvalidArgument},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			err := atLeader(tc.call)
			if got := status.Code(err); got != tc.code || !errors.Is(gridpb.FromStatus(err), tc.want) {
				t.Fatalf("got %v (%v), want %v (%v)", got, err, tc.code, tc.want)
			}
		})
	}

	// Unlocking twice, or after the lease is gone, says the lock is not held.
	l2 := tryLock(t, c, "twice")
	if err := l2.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l2.Unlock(ctx); !errors.Is(err, client.ErrLockNotHeld) {
		t.Fatalf("second unlock: %v, want ErrLockNotHeld", err)
	}

	// None of it changed anything: "held" is still held, with its token,
	// and the fenced key kept its value.
	if _, err := c.TryLock(ctx, "held"); !errors.Is(err, client.ErrLockHeld) || !strings.Contains(err.Error(), "token") {
		t.Fatalf("held lock after bad input: %v", err)
	}
	if v, _, err := m.Get(ctx, []byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("fenced key after bad input: %q %v", v, err)
	}
}
