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

// TestTTLExpiryInLogOrder races linearizable gets and compare-and-swaps
// around a key's expiry, round after round: a round in which a get reports
// the key expired and a swap finds it live is not linearizable (the leader
// used to stamp a write's time before proposing it and compare reads with
// its clock at read time, so a swap stamped just before the expiry could
// succeed after a get had reported the key gone).
func TestTTLExpiryInLogOrder(t *testing.T) {
	_, c := startCluster(t, 2, "ttl")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := c.Map("ttl")
	const ttl = 300 * time.Millisecond
	violations, swaps, expired := 0, 0, 0
	for round := range 40 {
		key := []byte(fmt.Sprintf("k%02d", round))
		ver, err := m.Put(ctx, key, []byte("v"), client.WithTTL(ttl))
		if err != nil {
			t.Fatal(err)
		}
		put := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var expiredAt time.Time   // when the first get that reported the key expired returned
		var swappedAt []time.Time // when each successful swap was issued
		deadline := put.Add(ttl + 300*time.Millisecond)
		for range 4 { // gets poll across the expiry
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Until(put.Add(ttl - 30*time.Millisecond)))
				for time.Now().Before(deadline) {
					_, _, err := m.Get(ctx, key)
					if errors.Is(err, client.ErrNotFound) {
						mu.Lock()
						if now := time.Now(); expiredAt.IsZero() || now.Before(expiredAt) {
							expiredAt = now
						}
						mu.Unlock()
						return
					}
				}
			}()
		}
		for i := range 16 { // swaps issued every millisecond across the expiry (from 6 ms before to 19 ms after it)
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Until(put.Add(ttl + time.Duration(round%4*3-6)*time.Millisecond + time.Duration(i)*time.Millisecond)))
				issued := time.Now()
				if ok, _, err := m.CompareAndSwap(ctx, key, ver, []byte("swapped")); err == nil && ok {
					mu.Lock()
					swappedAt = append(swappedAt, issued)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		// A swap that succeeds makes the key live for good (no TTL), and an
		// expired key stays gone: a get that reported it expired and a
		// swap that found it live cannot both be placed in one order.
		swaps += len(swappedAt)
		if !expiredAt.IsZero() {
			expired++
		}
		if !expiredAt.IsZero() && len(swappedAt) > 0 {
			violations++
			t.Errorf("round %d: a get reported the key expired at +%v, and a swap issued at +%v found it live",
				round, expiredAt.Sub(put), swappedAt[0].Sub(put))
		}
	}
	t.Logf("40 rounds around a %v TTL: %d swaps succeeded, %d rounds where a get reported the key expired; %d rounds with both", ttl, swaps, expired, violations)
	if swaps == 0 || expired == 0 {
		t.Errorf("the race was not run: every round needs the swaps to start around the expiry")
	}
}

// TestLinearizableWithTTL runs the porcupine-checked workload with half the
// puts carrying short TTLs (expiring while gets and swaps race them) while
// nodes are SIGKILLed and restarted: expiry must fall inside its window
// (after the TTL counted from the put's call, before it counted from its
// return) and, once a read saw a key expired, stay decided.
func TestLinearizableWithTTL(t *testing.T) {
	duration := 8 * time.Second
	if *long {
		duration = 60 * time.Second
	}
	lc, c := startCluster(t, 4, "ttl")
	ctx, cancel := context.WithTimeout(context.Background(), duration+3*time.Minute)
	defer cancel()
	h := &history{start: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	m := c.Map("ttl")
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runWorker(ctx, w, m, []string{"a", "b", "c", "d", "e"}, h, stop, 20*time.Millisecond, 80*time.Millisecond, 250*time.Millisecond)
		}()
	}
	ids := lc.IDs()
	nemesis := killLoop(ctx, t, lc, stop, func(i int) string { return ids[i%len(ids)] })
	time.Sleep(duration)
	close(stop)
	kills := <-nemesis
	wg.Wait()
	ttlPuts := 0
	h.mu.Lock()
	for _, op := range h.ops {
		if in := op.Input.(kvInput); in.kind == opPut && in.ttl > 0 {
			ttlPuts++
		}
	}
	h.mu.Unlock()
	checkLinearizable(t, h, fmt.Sprintf("%d puts with a TTL, %d node kills", ttlPuts, kills))
	if ttlPuts == 0 {
		t.Fatal("no put with a TTL was issued")
	}
}
