package replication

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestRecoverGroupFromLastReplica loses two of three replicas for good and
// rewrites the survivor into a group of one: it keeps every entry it held
// (in its engine, its snapshot and its log), elects itself and takes
// writes; asking again changes nothing.
func TestRecoverGroupFromLastReplica(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	ctx := context.Background()
	for i := 0; i < 200; i++ {
		c.putRetry(0, fmt.Sprintf("k%03d", i), fmt.Sprintf("v%d", i), 7, uint64(i+1))
	}
	ldr, ldrID := c.leaderNode(0)
	if err := ldr.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := 200; i < 300; i++ {
		last = c.putRetry(0, fmt.Sprintf("k%03d", i), fmt.Sprintf("v%d", i), 7, uint64(i+1)).Version
	}
	survivor := "n1"
	c.waitApplied(survivor, 0, last)
	for _, id := range c.ids {
		if id != survivor {
			c.stop(id)
		}
	}
	t.Logf("leader was %s; %s survives at applied index %d", ldrID, survivor, last)
	h := c.hosts[survivor]
	before, err := h.Replica(0)
	if err != nil || before.State != "open" || before.LastIndex < last {
		t.Fatalf("replica before recovery: %+v, %v", before, err)
	}
	if _, err := h.RecoverGroup(ctx, MetaGroup, Member{ID: survivor, Addr: survivor}); err == nil {
		t.Fatal("the metadata group was recovered")
	}
	g, err := h.RecoverGroup(ctx, 0, Member{ID: survivor, Addr: survivor})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !g.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("the recovered replica did not elect itself")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ms, err := g.Members()
	if err != nil || len(ms) != 1 || ms[0].ID != survivor || !ms[0].Voter {
		t.Fatalf("members after recovery: %+v, %v", ms, err)
	}
	for i := 0; i < 300; i++ {
		if v, ok := c.staleGet(survivor, 0, fmt.Sprintf("k%03d", i)); !ok || v != fmt.Sprintf("v%d", i) {
			t.Fatalf("after recovery k%03d = %q %v", i, v, ok)
		}
	}
	res := c.putRetry(0, "after", "recovery", 8, 1)
	if res.Version <= last {
		t.Fatalf("write after recovery at index %d, not after %d", res.Version, last)
	}
	again, err := h.RecoverGroup(ctx, 0, Member{ID: survivor, Addr: survivor})
	if err != nil || again != g {
		t.Fatalf("recovering a group of one again: %v (same group %v)", err, again == g)
	}
	after, _ := h.Replica(0)
	if after.Role != "Leader" || after.Applied < res.Version {
		t.Fatalf("replica after recovery: %+v", after)
	}
}
