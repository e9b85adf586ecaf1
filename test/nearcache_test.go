package test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

// TestNearCacheFreshness reads a hot set through one client's near cache
// while another client overwrites it, and checks the cache's promises on
// every read: a value is never older than one acknowledged more than
// MaxStaleness before the read began, and the caching client always reads
// its own writes. The worst and median staleness seen are logged (they
// are measurements, not pass/fail timings).
func TestNearCacheFreshness(t *testing.T) {
	lc, writer := startCluster(t, 4, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reader, err := client.DialWith(ctx, lc.Addrs(), client.WithTLSDir(lc.ClientTLSDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	const bound = 1500 * time.Millisecond
	nc, err := reader.Map("kv").NearCache(ctx, client.NearCacheOptions{MaxEntries: 100, MaxStaleness: bound})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	// The caching client reads its own writes, hit or miss.
	for i := range 30 {
		key := []byte(fmt.Sprint("own-", i%3))
		want := fmt.Sprint(i)
		if _, err := nc.Put(ctx, key, []byte(want)); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			got, _, err := nc.GetCached(ctx, key)
			if err != nil || string(got) != want {
				t.Fatalf("read own write %s=%s: got %q, %v", key, want, got, err)
			}
		}
	}

	// Another client overwrites a hot set with increasing numbers; the
	// acknowledgement time of each number is recorded.
	const keys, readers = 10, 4
	var mu sync.Mutex
	acked := map[string][]time.Time{} // key → ack time of value n at index n
	for k := range keys {
		key := fmt.Sprint("hot-", k)
		if _, err := writer.Map("kv").Put(ctx, []byte(key), []byte("0")); err != nil {
			t.Fatal(err)
		}
		acked[key] = []time.Time{time.Now()}
	}
	type read struct {
		key    string
		n      int
		start  time.Time
		cached bool
	}
	var reads []read
	wctx, stopWriting := context.WithTimeout(ctx, 8*time.Second)
	defer stopWriting()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; wctx.Err() == nil; n++ {
			for k := range keys {
				key := fmt.Sprint("hot-", k)
				if _, err := writer.Map("kv").Put(wctx, []byte(key), []byte(strconv.Itoa(n))); err != nil {
					if wctx.Err() == nil && !errors.Is(err, client.ErrAmbiguous) {
						t.Errorf("put %s=%d: %v", key, n, err)
					}
					return // an unknown outcome would leave a gap in the record
				}
				mu.Lock()
				acked[key] = append(acked[key], time.Now())
				mu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []read
			for i := 0; wctx.Err() == nil; i++ {
				key := fmt.Sprint("hot-", (i+r)%keys)
				start := time.Now()
				v, info, err := nc.GetCached(wctx, []byte(key))
				if err != nil {
					if wctx.Err() == nil {
						t.Errorf("get %s: %v", key, err)
					}
					break
				}
				n, err := strconv.Atoi(string(v))
				if err != nil {
					t.Errorf("get %s: %q", key, v)
					break
				}
				mine = append(mine, read{key: key, n: n, start: start, cached: info.Cached})
				time.Sleep(200 * time.Microsecond) // many reads, but leave the writer and the nodes some CPU
			}
			mu.Lock()
			reads = append(reads, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()

	// A read of value n is stale by how long before it began value n+1 was
	// acknowledged (0 if n+1 was not acknowledged before it began).
	var stale []time.Duration
	hits := 0
	for _, rd := range reads {
		if rd.cached {
			hits++
		}
		times := acked[rd.key]
		s := time.Duration(0)
		if rd.n+1 < len(times) && times[rd.n+1].Before(rd.start) {
			s = rd.start.Sub(times[rd.n+1])
		}
		if s > 0 && !rd.cached {
			t.Errorf("a linearizable read of %s began %v after value %d was acknowledged and returned %d", rd.key, s, rd.n+1, rd.n)
		}
		if s >= bound {
			t.Errorf("the cache served %s=%d %v after %d was acknowledged (bound %v)", rd.key, rd.n, s, rd.n+1, bound)
		}
		stale = append(stale, s)
	}
	if len(reads) == 0 {
		t.Fatal("no reads")
	}
	slices.Sort(stale)
	st := nc.Stats()
	t.Logf("%d reads, %.1f%% from the cache; staleness median %v, p99 %v, worst %v (bound %v); %d invalidations, %d expired",
		len(reads), 100*float64(hits)/float64(len(reads)), stale[len(stale)/2], stale[len(stale)*99/100], stale[len(stale)-1],
		bound, st.Invalidations, st.Expired)
	if st.Invalidations == 0 {
		t.Error("the change stream invalidated nothing while another client wrote the cached keys")
	}
}

// BenchmarkNearCacheHotSet reads a hot set of 100 keys, never written
// during the run, through a near cache and linearizably, and reports the
// cache's hit ratio (go test -run '^$' -bench NearCache ./test/).
func BenchmarkNearCacheHotSet(b *testing.B) {
	_, c := startCluster(b, 3, "kv")
	ctx := context.Background()
	m := c.Map("kv")
	for k := range 100 {
		if _, err := m.Put(ctx, []byte(fmt.Sprint("hot-", k)), make([]byte, 256)); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("linearizable", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, _, err := m.Get(ctx, []byte(fmt.Sprint("hot-", i%100))); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("near-cache", func(b *testing.B) {
		nc, err := m.NearCache(ctx, client.NearCacheOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		i := 0
		for b.Loop() {
			if _, err := nc.Get(ctx, []byte(fmt.Sprint("hot-", i%100))); err != nil {
				b.Fatal(err)
			}
			i++
		}
		st := nc.Stats()
		b.ReportMetric(100*float64(st.Hits)/float64(st.Hits+st.Misses), "hit%")
	})
}
