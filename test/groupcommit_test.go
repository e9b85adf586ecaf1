package test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
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
	return runWriters(ctx, m, n, timeout, "v").stop
}

// writers are clients putting fresh keys (so each key's value is known)
// until stopped, counting what was acknowledged, refused for a full disk
// (grid.ErrDiskFull), or of unknown outcome.
type writers struct {
	mu               sync.Mutex
	acked            map[string]string
	refused, unknown int
	done             chan struct{}
	wg               sync.WaitGroup
}

// runWriters starts n writers putting values of prefix plus a suffix into
// m, each put bounded by timeout.
func runWriters(ctx context.Context, m *client.Map, n int, timeout time.Duration, prefix string) *writers {
	ws := &writers{acked: map[string]string{}, done: make(chan struct{})}
	for w := range n {
		ws.wg.Add(1)
		go func() {
			defer ws.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-ws.done:
					return
				default:
				}
				k, v := fmt.Sprintf("w%02d-%05d", w, i), fmt.Sprintf("%s%d-%d", prefix, w, i)
				pctx, pcancel := context.WithTimeout(ctx, timeout)
				_, err := m.Put(pctx, []byte(k), []byte(v))
				pcancel()
				ws.mu.Lock()
				switch {
				case err == nil:
					ws.acked[k] = v
				case errors.Is(err, grid.ErrDiskFull):
					ws.refused++
				default:
					ws.unknown++
				}
				ws.mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	return ws
}

// counts returns how many puts were acknowledged, refused and unknown so far.
func (ws *writers) counts() (acked, refused, unknown int) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return len(ws.acked), ws.refused, ws.unknown
}

// note records a write acknowledged outside the writers, to be checked
// with theirs.
func (ws *writers) note(k, v string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.acked[k] = v
}

// forget drops a key (deleted by the test) from the acknowledged ones.
func (ws *writers) forget(k string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	delete(ws.acked, k)
}

// any returns up to n acknowledged keys with their values.
func (ws *writers) any(n int) map[string]string {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	out := map[string]string{}
	for k, v := range ws.acked {
		if len(out) == n {
			break
		}
		out[k] = v
	}
	return out
}

// stop stops the writers and returns every acknowledged key with its value.
func (ws *writers) stop() map[string]string {
	close(ws.done)
	ws.wg.Wait()
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.acked
}
