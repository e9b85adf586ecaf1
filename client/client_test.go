package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
)

const testMap = "users"

func fastRetry() client.RetryPolicy {
	return client.RetryPolicy{MaxAttempts: 8, BaseBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
}

// startFake starts a 3-node, 8-partition fake cluster with testMap created.
func startFake(t *testing.T) *fakeCluster {
	t.Helper()
	f, err := newFakeCluster(3, 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	f.maps[testMap] = map[string]fakeEntry{}
	return f
}

func dial(t *testing.T, f *fakeCluster, opts ...client.Option) *client.Client {
	t.Helper()
	opts = append([]client.Option{client.WithRetry(fastRetry())}, opts...)
	c, err := client.DialWith(testCtx(t), f.Addrs(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// keyIn returns a key of testMap that lands in partition part.
func keyIn(f *fakeCluster, part int) []byte { return prefixedKeyIn(f, "key", part) }

func prefixedKeyIn(f *fakeCluster, prefix string, part int) []byte {
	for i := 0; ; i++ {
		k := []byte(fmt.Sprintf("%s-%d", prefix, i))
		if f.Partition(testMap, k) == part {
			return k
		}
	}
}

func mustGet(t *testing.T, ctx context.Context, m *client.Map, key []byte, opts ...client.ReadOption) ([]byte, uint64) {
	t.Helper()
	v, ver, err := m.Get(ctx, key, opts...)
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return v, ver
}

func TestWritesAndReadsGoStraightToLeaders(t *testing.T) {
	f := startFake(t)
	leads := map[int]int{} // node -> partitions it leads
	for p := 0; p < 8; p++ {
		l := f.Replicas(p)[p%3]
		f.SetLeader(p, l)
	}
	c := dial(t, f)
	ctx := testCtx(t)
	m := c.Map(testMap)

	for i := 0; i < 100; i++ {
		k := []byte(fmt.Sprintf("k%d", i))
		if _, err := m.Put(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := m.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
		leads[f.Leader(f.Partition(testMap, k))] += 2
	}
	if r := f.Rejected(); r != 0 {
		t.Errorf("%d requests reached a node that does not lead their partition, want 0", r)
	}
	for n := 0; n < 3; n++ {
		if got := f.Served(n); got != leads[n] {
			t.Errorf("node %d served %d calls, want %d (the calls for the partitions it leads)", n, got, leads[n])
		}
	}
}

func TestFollowsNotLeaderHint(t *testing.T) {
	f := startFake(t)
	f.SetTableLeaders(false) // the client must start from the first replica
	for p := 0; p < 8; p++ {
		f.SetLeader(p, f.Replicas(p)[2])
	}
	c := dial(t, f)
	ctx := testCtx(t)
	m := c.Map(testMap)

	k := keyIn(f, 0)
	ver, err := m.Put(ctx, k, []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if r := f.Rejected(); r != 1 {
		t.Fatalf("rejections = %d, want 1: one NotLeader, then straight to the hinted leader", r)
	}
	// The hint is remembered: no more detours for this partition.
	if _, err := m.Put(ctx, prefixedKeyIn(f, "other", 0), []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if v, gotVer := mustGet(t, ctx, m, k); string(v) != "v1" || gotVer != ver {
		t.Fatalf("get = %q@%d, want v1@%d", v, gotVer, ver)
	}
	if r := f.Rejected(); r != 1 {
		t.Fatalf("rejections = %d after the leader was learnt, want still 1", r)
	}
}

func TestLeaderMovedRetrySucceeds(t *testing.T) {
	for _, hints := range []bool{true, false} {
		t.Run(fmt.Sprintf("hints=%v", hints), func(t *testing.T) {
			f := startFake(t)
			c := dial(t, f)
			ctx := testCtx(t)
			m := c.Map(testMap)
			k := keyIn(f, 3)
			if _, err := m.Put(ctx, k, []byte("v1")); err != nil {
				t.Fatal(err)
			}

			newLeader := f.Replicas(3)[1]
			f.SetLeader(3, newLeader)
			f.SetHints(hints)
			before := f.Served(newLeader)
			ver, err := m.Put(ctx, k, []byte("v2"))
			if err != nil {
				t.Fatalf("put after the leader moved: %v", err)
			}
			if f.Served(newLeader) != before+1 {
				t.Errorf("the new leader served %d calls, want 1", f.Served(newLeader)-before)
			}
			if v, got := mustGet(t, ctx, m, k); string(v) != "v2" || got != ver {
				t.Fatalf("get = %q@%d, want v2@%d", v, got, ver)
			}
		})
	}
}

func TestPartitionMovedRefreshesTable(t *testing.T) {
	f := startFake(t)
	c := dial(t, f)
	ctx := testCtx(t)
	m := c.Map(testMap)
	k := keyIn(f, 5)
	if _, err := m.Put(ctx, k, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	old := f.Replicas(5)
	f.MovePartition(5, old[1], old[2]) // old[0], the cached leader, no longer holds it

	if _, err := m.Put(ctx, k, []byte("v2")); err != nil {
		t.Fatalf("put after the partition moved: %v", err)
	}
	if v, _ := mustGet(t, ctx, m, k); string(v) != "v2" {
		t.Fatalf("get = %q, want v2", v)
	}
	tbl, err := c.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tbl.Epoch != 2 || len(tbl.Partitions[5].Replicas) != 2 {
		t.Fatalf("table epoch %d, partition 5 replicas %v; want epoch 2 and the new replica set", tbl.Epoch, tbl.Partitions[5].Replicas)
	}
}

func TestUnavailableNodeIsSkipped(t *testing.T) {
	f := startFake(t)
	c := dial(t, f)
	ctx := testCtx(t)
	m := c.Map(testMap)

	t.Run("write", func(t *testing.T) {
		k := keyIn(f, 1)
		f.FailNext(f.Leader(1), failUnavailable, 2)
		applied := f.Applied()
		if _, err := m.Put(ctx, k, []byte("v")); err != nil {
			t.Fatalf("put with the leader failing twice: %v", err)
		}
		if got := f.Applied() - applied; got != 1 {
			t.Fatalf("%d writes applied, want 1", got)
		}
	})

	t.Run("stopped node", func(t *testing.T) {
		keys := make([][]byte, 8)
		for p := range keys {
			keys[p] = keyIn(f, p)
			if _, err := m.Put(ctx, keys[p], []byte{byte(p)}); err != nil {
				t.Fatal(err)
			}
		}
		f.Stop(0)
		// Stale reads are served by whichever replica is up.
		for p, k := range keys {
			e, err := m.GetEntry(ctx, k, client.Stale())
			if err != nil {
				t.Fatalf("stale get in partition %d with node 0 down: %v", p, err)
			}
			if e.ServedBy == f.ID(0) || !bytes.Equal(e.Value, []byte{byte(p)}) {
				t.Fatalf("stale get = %v from %s", e.Value, e.ServedBy)
			}
		}
		// Once another node leads node 0's partitions, linearizable reads
		// and writes get there past the dead node.
		for p := 0; p < 8; p++ {
			if f.Leader(p) == 0 {
				f.SetLeader(p, f.Replicas(p)[1])
			}
		}
		for p, k := range keys {
			if v, _ := mustGet(t, ctx, m, k); !bytes.Equal(v, []byte{byte(p)}) {
				t.Fatalf("get in partition %d = %v", p, v)
			}
			if _, err := m.Put(ctx, k, []byte("new")); err != nil {
				t.Fatalf("put in partition %d with node 0 down: %v", p, err)
			}
		}
	})
}

func TestAmbiguousFailureThenRetryIsAppliedOnce(t *testing.T) {
	f := startFake(t)
	c := dial(t, f)
	ctx := testCtx(t)
	m := c.Map(testMap)
	k := keyIn(f, 2)
	leader := f.Leader(2)

	// The leader applies the write but the reply is lost: the retry, with the
	// same sequence number, gets the first outcome back.
	f.FailNext(leader, failLostReply, 1)
	applied := f.Applied()
	ver, err := m.Put(ctx, k, []byte("v1"))
	if err != nil {
		t.Fatalf("put after a lost reply: %v", err)
	}
	if e, _ := f.Value(testMap, k); e.version != ver || f.Applied()-applied != 1 {
		t.Fatalf("put returned version %d, store has %d after %d applies; want the same version, 1 apply",
			ver, e.version, f.Applied()-applied)
	}

	// A compare-and-swap retried after a lost reply must report the swap it
	// made, not fail against its own write.
	f.FailNext(leader, failLostReply, 1)
	swapped, ver2, err := m.CompareAndSwap(ctx, k, ver, []byte("v2"))
	if err != nil || !swapped {
		t.Fatalf("cas after a lost reply = %v, %v; want swapped", swapped, err)
	}
	if v, got := mustGet(t, ctx, m, k); string(v) != "v2" || got != ver2 {
		t.Fatalf("get = %q@%d, want v2@%d", v, got, ver2)
	}

	// Leadership lost before applying: the retry applies it.
	f.FailNext(leader, failAmbiguous, 2)
	if existed, err := m.Delete(ctx, k); err != nil || !existed {
		t.Fatalf("delete after ambiguous failures = %v, %v; want existed", existed, err)
	}
}

func TestAmbiguousWhenRetriesRunOut(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind failKind
	}{
		{"leadership lost", failAmbiguous},
		{"reply lost", failLostReply},
		{"server timeout", failDeadline},
		{"connection dropped", failUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t)
			c := dial(t, f)
			ctx := testCtx(t)
			m := c.Map(testMap)
			for n := 0; n < 3; n++ {
				f.FailNext(n, tc.kind, 100)
			}
			_, err := m.Put(ctx, keyIn(f, 4), []byte("v"))
			var ae *client.AmbiguousError
			if !errors.Is(err, client.ErrAmbiguous) || !errors.As(err, &ae) {
				t.Fatalf("put = %v, want an error matching ErrAmbiguous", err)
			}
			if ae.Attempts != fastRetry().MaxAttempts {
				t.Errorf("gave up after %d attempts, want %d", ae.Attempts, fastRetry().MaxAttempts)
			}
			// A read has no outcome to be unsure of.
			if _, _, err := m.Get(ctx, keyIn(f, 4)); err == nil || errors.As(err, &ae) {
				t.Fatalf("get = %v, want a failure that is not an AmbiguousError", err)
			}
			f.ClearFailures()
			if _, err := m.Put(ctx, keyIn(f, 4), []byte("v")); err != nil {
				t.Fatalf("put once the cluster recovers: %v", err)
			}
		})
	}

	t.Run("refused everywhere", func(t *testing.T) {
		f := startFake(t)
		c := dial(t, f)
		ctx := testCtx(t)
		for p := 0; p < 8; p++ {
			f.SetLeader(p, -1)
		}
		_, err := c.Map(testMap).Put(ctx, keyIn(f, 4), []byte("v"))
		if !errors.Is(err, client.ErrNoLeader) || errors.Is(err, client.ErrAmbiguous) {
			t.Fatalf("put with no leader anywhere = %v, want ErrNoLeader and not ambiguous", err)
		}
		if f.Applied() != 0 {
			t.Fatal("a write was applied")
		}
	})

	t.Run("context deadline", func(t *testing.T) {
		f := startFake(t)
		c := dial(t, f, client.WithRetry(client.RetryPolicy{MaxAttempts: 1000, BaseBackoff: time.Millisecond, MaxBackoff: time.Millisecond}))
		for n := 0; n < 3; n++ {
			f.FailNext(n, failLostReply, 100000)
		}
		ctx, cancel := context.WithTimeout(testCtx(t), 50*time.Millisecond)
		defer cancel()
		_, err := c.Map(testMap).Put(ctx, keyIn(f, 4), []byte("v"))
		if !errors.Is(err, client.ErrAmbiguous) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("put = %v, want ErrAmbiguous and context.DeadlineExceeded", err)
		}
	})
}

func TestInvalidInputNeverLeavesTheClient(t *testing.T) {
	f := startFake(t)
	c := dial(t, f)
	ctx := testCtx(t)
	m := c.Map(testMap)
	bad := c.Map("no spaces allowed")
	bigKey := bytes.Repeat([]byte("k"), 4<<10+1)
	bigValue := make([]byte, 1<<20+1)
	okKey, okValue := []byte("k"), []byte("v")
	discard := func(client.Entry) error { return nil }

	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"put empty key", func() error { _, err := m.Put(ctx, nil, okValue); return err }, client.ErrEmptyKey},
		{"put big key", func() error { _, err := m.Put(ctx, bigKey, okValue); return err }, client.ErrKeyTooLarge},
		{"put big value", func() error { _, err := m.Put(ctx, okKey, bigValue); return err }, client.ErrValueTooLarge},
		{"put bad map", func() error { _, err := bad.Put(ctx, okKey, okValue); return err }, client.ErrInvalidMapName},
		{"get empty key", func() error { _, _, err := m.Get(ctx, []byte{}); return err }, client.ErrEmptyKey},
		{"get big key", func() error { _, _, err := m.Get(ctx, bigKey, client.Stale()); return err }, client.ErrKeyTooLarge},
		{"get bad map", func() error { _, _, err := bad.Get(ctx, okKey); return err }, client.ErrInvalidMapName},
		{"delete empty key", func() error { _, err := m.Delete(ctx, nil); return err }, client.ErrEmptyKey},
		{"delete bad map", func() error { _, err := bad.Delete(ctx, okKey); return err }, client.ErrInvalidMapName},
		{"cas big value", func() error { _, _, err := m.CompareAndSwap(ctx, okKey, 0, bigValue); return err }, client.ErrValueTooLarge},
		{"cas big key", func() error { _, _, err := m.CompareAndSwap(ctx, bigKey, 0, okValue); return err }, client.ErrKeyTooLarge},
		{"cad empty key", func() error { _, _, err := m.CompareAndDelete(ctx, nil, 1); return err }, client.ErrEmptyKey},
		{"scan bad map", func() error { return bad.Scan(ctx, nil, discard) }, client.ErrInvalidMapName},
		{"scan big prefix", func() error { return m.Scan(ctx, bigKey, discard) }, client.ErrKeyTooLarge},
		{"create bad map", func() error { return c.CreateMap(ctx, "") }, client.ErrInvalidMapName},
		{"create long map name", func() error { return c.CreateMap(ctx, strings.Repeat("m", 65)) }, client.ErrInvalidMapName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.TotalKVCalls()
			if err := tc.call(); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if f.TotalKVCalls() != before {
				t.Fatal("the request reached a node")
			}
		})
	}
	maps, err := c.ListMaps(ctx)
	if err != nil || len(maps) != 1 {
		t.Fatalf("maps = %v, %v; want only %q", maps, err, testMap)
	}
}

func TestChecksumMismatchIsReported(t *testing.T) {
	f := startFake(t)
	c := dial(t, f)
	ctx := testCtx(t)
	m := c.Map(testMap)
	k := []byte("precious")
	if _, err := m.Put(ctx, k, []byte("data")); err != nil {
		t.Fatal(err)
	}
	f.Corrupt(testMap, k)

	if _, _, err := m.Get(ctx, k); !errors.Is(err, client.ErrChecksum) {
		t.Errorf("get = %v, want ErrChecksum", err)
	}
	if _, _, err := m.Get(ctx, k, client.Stale()); !errors.Is(err, client.ErrChecksum) {
		t.Errorf("stale get = %v, want ErrChecksum", err)
	}
	delivered := 0
	err := m.Scan(ctx, nil, func(client.Entry) error { delivered++; return nil })
	if !errors.Is(err, client.ErrChecksum) {
		t.Errorf("scan = %v, want ErrChecksum", err)
	}
	if delivered != 0 {
		t.Errorf("scan delivered %d entries, want 0 (the only entry is corrupt)", delivered)
	}
}

func TestScanReturnsEveryKeyOnce(t *testing.T) {
	f := startFake(t)
	c := dial(t, f, client.WithScanPageSize(7))
	ctx := testCtx(t)
	m := c.Map(testMap)
	want := map[string]bool{}
	for i := 0; i < 300; i++ {
		k := fmt.Sprintf("user:%03d", i)
		want[k] = true
		if _, err := m.Put(ctx, []byte(k), []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 50; i++ {
		if _, err := m.Put(ctx, []byte(fmt.Sprintf("order:%d", i)), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}

	scan := func(t *testing.T, opts ...client.ReadOption) {
		t.Helper()
		seen := map[string]int{}
		last := map[int]string{} // partition -> last key seen
		err := m.Scan(ctx, []byte("user:"), func(e client.Entry) error {
			k := string(e.Key)
			seen[k]++
			if !bytes.Equal(e.Key, e.Value) || e.Version == 0 || e.AppliedIndex < e.Version {
				return fmt.Errorf("entry %q = %q@%d (applied %d)", k, e.Value, e.Version, e.AppliedIndex)
			}
			if p := f.Partition(testMap, e.Key); p != e.Partition {
				return fmt.Errorf("entry %q reported in partition %d, lives in %d", k, e.Partition, p)
			}
			if prev, ok := last[e.Partition]; ok && prev >= k {
				return fmt.Errorf("partition %d: %q came after %q", e.Partition, k, prev)
			}
			last[e.Partition] = k
			return nil
		}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		for k := range want {
			if seen[k] != 1 {
				t.Errorf("%q seen %d times, want once", k, seen[k])
			}
		}
		if len(seen) != len(want) {
			t.Errorf("scan returned %d keys, want %d", len(seen), len(want))
		}
	}
	t.Run("linearizable", func(t *testing.T) { scan(t) })
	t.Run("stale", func(t *testing.T) { scan(t, client.Stale()) })
	t.Run("with failures", func(t *testing.T) {
		f.FailNext(f.Leader(3), failUnavailable, 1)
		f.FailNext(f.Leader(5), failResourceLimit, 2) // page too big: asks for less
		scan(t)
	})
	t.Run("stop early", func(t *testing.T) {
		stop := errors.New("enough")
		n := 0
		err := m.Scan(ctx, nil, func(client.Entry) error {
			if n++; n == 5 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || n != 5 {
			t.Fatalf("scan = %v after %d entries, want the callback's error after 5", err, n)
		}
	})
}

func TestCompareAndSwap(t *testing.T) {
	f := startFake(t)
	c := dial(t, f)
	ctx := testCtx(t)
	m := c.Map(testMap)
	k := []byte("counter")

	swapped, v1, err := m.CompareAndSwap(ctx, k, 0, []byte("1"))
	if err != nil || !swapped || v1 == 0 {
		t.Fatalf("create-if-absent = %v@%d, %v; want swapped with a version", swapped, v1, err)
	}
	swapped, cur, err := m.CompareAndSwap(ctx, k, 0, []byte("again"))
	if err != nil || swapped || cur != v1 {
		t.Fatalf("create-if-absent on an existing key = %v@%d, %v; want not swapped, current version %d", swapped, cur, err, v1)
	}
	swapped, cur, err = m.CompareAndSwap(ctx, k, v1+1000, []byte("stale"))
	if err != nil || swapped || cur != v1 {
		t.Fatalf("cas with a wrong version = %v@%d, %v; want not swapped at %d", swapped, cur, err, v1)
	}
	swapped, v2, err := m.CompareAndSwap(ctx, k, v1, []byte("2"))
	if err != nil || !swapped || v2 <= v1 {
		t.Fatalf("cas with the right version = %v@%d, %v; want swapped to a newer version", swapped, v2, err)
	}
	if v, ver := mustGet(t, ctx, m, k); string(v) != "2" || ver != v2 {
		t.Fatalf("get = %q@%d, want 2@%d", v, ver, v2)
	}
	deleted, cur, err := m.CompareAndDelete(ctx, k, v1)
	if err != nil || deleted || cur != v2 {
		t.Fatalf("compare-and-delete with an old version = %v@%d, %v; want not deleted at %d", deleted, cur, err, v2)
	}
	if deleted, _, err = m.CompareAndDelete(ctx, k, v2); err != nil || !deleted {
		t.Fatalf("compare-and-delete = %v, %v; want deleted", deleted, err)
	}
	if _, _, err := m.Get(ctx, k); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get after delete = %v, want ErrNotFound", err)
	}
}

func TestDeleteAndNotFound(t *testing.T) {
	f := startFake(t)
	c := dial(t, f)
	ctx := testCtx(t)
	m := c.Map(testMap)
	k := []byte("k")
	if _, _, err := m.Get(ctx, k); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get of a missing key = %v, want ErrNotFound", err)
	}
	if _, err := m.Put(ctx, k, nil); err != nil {
		t.Fatal(err)
	}
	if v, _ := mustGet(t, ctx, m, k); len(v) != 0 {
		t.Fatalf("empty value read back as %q", v)
	}
	if existed, err := m.Delete(ctx, k); err != nil || !existed {
		t.Fatalf("delete = %v, %v; want existed", existed, err)
	}
	if existed, err := m.Delete(ctx, k); err != nil || existed {
		t.Fatalf("second delete = %v, %v; want not existed", existed, err)
	}
	if _, err := c.Map("nope").Put(ctx, k, nil); !errors.Is(err, client.ErrUnknownMap) {
		t.Fatalf("put to a map never created = %v, want ErrUnknownMap", err)
	}
}

func TestAdmin(t *testing.T) {
	f := startFake(t)
	c := dial(t, f)
	ctx := testCtx(t)
	if err := c.CreateMap(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateMap(ctx, "orders"); !errors.Is(err, client.ErrMapExists) {
		t.Fatalf("second create = %v, want ErrMapExists", err)
	}
	maps, err := c.ListMaps(ctx)
	if err != nil || strings.Join(maps, ",") != "orders,users" {
		t.Fatalf("maps = %v, %v", maps, err)
	}
	tbl, err := c.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tbl.Epoch != 1 || tbl.NumPartitions() != 8 || len(tbl.Nodes) != 3 || tbl.Partitions[0].Leader != f.ID(f.Leader(0)) {
		t.Fatalf("table = %+v", tbl)
	}
	st, err := c.NodeStatus(ctx, f.Addrs()[1])
	if err != nil || st.GetNodeId() != f.ID(1) || len(st.GetGroups()) != 8 {
		t.Fatalf("status = %v, %v", st, err)
	}
}

func TestDial(t *testing.T) {
	f := startFake(t)
	ctx := testCtx(t)
	dead := deadAddr(t)

	c, err := client.DialWith(ctx, []string{dead, f.Addrs()[2]}, client.WithRetry(fastRetry()))
	if err != nil {
		t.Fatalf("dial with one dead seed: %v", err)
	}
	if _, err := c.Map(testMap).Put(ctx, []byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()

	if _, err := client.Dial(ctx); !errors.Is(err, client.ErrBadConfig) {
		t.Errorf("dial with no address = %v, want ErrBadConfig", err)
	}
	_, err = client.DialWith(ctx, f.Addrs(),
		client.WithRetry(client.RetryPolicy{}), client.WithLimits(grid.Limits{}), client.WithScanPageSize(0))
	if !errors.Is(err, client.ErrBadConfig) || strings.Count(err.Error(), "\n") < 4 {
		t.Errorf("dial with bad options = %v, want every problem reported", err)
	}
	_, err = client.DialWith(ctx, []string{dead}, client.WithRetry(fastRetry()))
	if err == nil {
		t.Error("dial to a dead node succeeded")
	}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

func TestCloseReleasesEverything(t *testing.T) {
	baseline := runtime.NumGoroutine()
	f, err := newFakeCluster(3, 4)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	c, err := client.Dial(ctx, f.Addrs()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateMap(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if _, err := c.Map("m").Put(ctx, []byte{byte(i + 1)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Map("m").Put(ctx, []byte("k"), nil); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("put after close = %v, want ErrClosed", err)
	}
	f.Close()

	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Under the default policy a request rides out an election longer than any
// attempt count would (it retries until its deadline), and a request whose
// deadline passes says so and names the last cause.
func TestDefaultRetryRidesOutAnElection(t *testing.T) {
	f := startFake(t)
	c := dial(t, f, client.WithRetry(client.DefaultRetryPolicy()))
	m := c.Map(testMap)
	key := keyIn(f, 4)
	f.SetLeader(4, -1)
	elected := make(chan struct{})
	go func() {
		defer close(elected)
		time.Sleep(3500 * time.Millisecond)
		f.SetLeader(4, 1)
	}()
	t.Cleanup(func() { <-elected })
	start := time.Now()
	if _, err := m.Put(context.Background(), key, []byte("v")); err != nil {
		t.Fatalf("put issued during a 3.5 s election: %v", err)
	}
	if d := time.Since(start); d < 3*time.Second {
		t.Fatalf("put succeeded after %v, before the partition had a leader", d)
	}

	f.SetLeader(4, -1)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := m.Put(ctx, key, []byte("w"))
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, client.ErrNoLeader) || errors.Is(err, client.ErrAmbiguous) {
		t.Fatalf("put past its deadline = %v, want DeadlineExceeded naming ErrNoLeader, not ambiguous", err)
	}
}
