package test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

// TestKillAllWhileGroupCommitting writes from many clients into every
// partition at once — so that each node's shared Raft log commits many
// groups' appends together — then SIGKILLs all three nodes at the same
// moment, restarts them, and finds every acknowledged write of every
// group: an append is acknowledged only after the sync that carried it.
func TestKillAllWhileGroupCommitting(t *testing.T) {
	const parts = 32
	lc, c := startCluster(t, parts, "gc")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := c.Map("gc")

	stopWriters := startWriters(ctx, m, 48, 2*time.Second)
	time.Sleep(3 * time.Second) // writes flow into every partition
	for _, id := range lc.IDs() {
		if err := lc.Kill(id); err != nil {
			t.Fatal(err)
		}
	}
	acked := stopWriters()
	n := len(acked)
	if n < 100 {
		t.Fatalf("only %d writes acknowledged before the kill", n)
	}
	for _, id := range lc.IDs() {
		if err := lc.StartNode(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	missing := 0
	for k, v := range acked {
		var got []byte
		eventually(t, 60*time.Second, func() error {
			var err error
			got, _, err = m.Get(ctx, []byte(k))
			if err != nil && !errors.Is(err, client.ErrNotFound) {
				return err
			}
			return nil
		})
		if string(got) != v {
			missing++
			t.Errorf("acknowledged %s=%s, read %q after the restart", k, v, got)
		}
	}
	eventually(t, 60*time.Second, func() error { return replicasEqual(ctx, lc, parts, []string{"gc"}) })
	t.Logf("%d acknowledged writes over %d partitions, all nodes killed at once: %d missing", n, parts, missing)
}

// startWriters runs n clients putting fresh keys into m, each put bounded by
// timeout; the returned function stops them and returns every
// acknowledged key with its value.
func startWriters(ctx context.Context, m *client.Map, n int, timeout time.Duration) func() map[string]string {
	var mu sync.Mutex
	acked := map[string]string{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k, v := fmt.Sprintf("w%02d-%05d", w, i), fmt.Sprintf("v%d-%d", w, i)
				pctx, pcancel := context.WithTimeout(ctx, timeout)
				_, err := m.Put(pctx, []byte(k), []byte(v))
				pcancel()
				if err == nil {
					mu.Lock()
					acked[k] = v
					mu.Unlock()
				}
			}
		}()
	}
	return func() map[string]string {
		close(stop)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return acked
	}
}
