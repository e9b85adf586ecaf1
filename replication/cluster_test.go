package replication

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// testCluster is an in-process cluster of hosts over the in-memory network,
// each with its own engine and Raft logs on disk.
type testCluster struct {
	t      *testing.T
	net    *InmemNetwork
	ids    []string
	dirs   map[string]string
	hosts  map[string]*Host
	engs   map[string]Engine
	groups int
	timing RaftTiming
}

func newTestCluster(t *testing.T, nodes, groups int) *testCluster {
	t.Helper()
	return newTestClusterTiming(t, nodes, groups, TestTiming())
}

func newTestClusterTiming(t *testing.T, nodes, groups int, timing RaftTiming) *testCluster {
	t.Helper()
	c := &testCluster{t: t, net: NewInmemNetwork(), dirs: map[string]string{}, hosts: map[string]*Host{}, engs: map[string]Engine{}, groups: groups, timing: timing}
	for i := 1; i <= nodes; i++ {
		id := fmt.Sprintf("n%d", i)
		c.ids = append(c.ids, id)
		c.dirs[id] = t.TempDir()
	}
	for _, id := range c.ids {
		c.start(id)
	}
	t.Cleanup(func() {
		for _, id := range c.ids {
			c.stop(id)
		}
	})
	return c
}

func (c *testCluster) servers() []Member {
	var out []Member
	for _, id := range c.ids {
		out = append(out, Member{ID: id, Addr: id, Voter: true})
	}
	return out
}

func (c *testCluster) start(id string) {
	c.t.Helper()
	eng, err := OpenEngine(EngineConfig{Dir: filepath.Join(c.dirs[id], "engine"), Profile: "small"})
	if err != nil {
		c.t.Fatal(err)
	}
	h, err := NewHost(HostConfig{
		NodeID: id, Dir: filepath.Join(c.dirs[id], "raft"), Engine: eng, Transports: c.net.Node(id),
		Timing: c.timing, Fatal: func(err error) { c.t.Errorf("fatal on %s: %v", id, err) },
	})
	if err != nil {
		c.t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := h.OpenGroup(ctx, MetaGroup, KindMeta, c.servers()); err != nil {
		c.t.Fatal(err)
	}
	for g := 0; g < c.groups; g++ {
		if _, err := h.OpenGroup(ctx, GroupID(g), KindData, c.servers()); err != nil {
			c.t.Fatal(err)
		}
	}
	c.hosts[id], c.engs[id] = h, eng
}

func (c *testCluster) stop(id string) {
	h, ok := c.hosts[id]
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Close(ctx); err != nil {
		c.t.Errorf("close %s: %v", id, err)
	}
	if err := c.engs[id].Close(); err != nil {
		c.t.Errorf("close engine %s: %v", id, err)
	}
	delete(c.hosts, id)
	delete(c.engs, id)
}

// leader waits for a leader of group g among running hosts.
func (c *testCluster) leader(g GroupID) *Group {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, h := range c.hosts {
			if grp, ok := h.Group(g); ok && grp.IsLeader() {
				return grp
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("no leader for %s", g)
	return nil
}

func (c *testCluster) put(g GroupID, key, value string, client, seq uint64) (*gridpb.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.leader(g).Propose(ctx, &gridpb.Command{ClientId: client, Seq: seq, LeaderTime: time.Now().UnixNano(),
		Op: &gridpb.Command_Put{Put: &gridpb.PutOp{Map: "m", Key: []byte(key), Value: []byte(value)}}})
}

// putRetry retries a put (same client id and seq) through leader changes.
func (c *testCluster) putRetry(g GroupID, key, value string, client, seq uint64) *gridpb.Result {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := c.put(g, key, value, client, seq)
		if err == nil {
			return res
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("put %s to %s: %v", key, g, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitApplied waits until group g on host id has applied at least index.
func (c *testCluster) waitApplied(id string, g GroupID, index uint64) {
	c.t.Helper()
	// raft backs off a peer that kept failing by up to ~10 s between
	// tries (failureWait doubled to maxFailureScale), and a replica that
	// was away may then need a snapshot: allow for both on a loaded machine.
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		if grp, ok := c.hosts[id].Group(g); ok && grp.Applied() >= index {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	grp, _ := c.hosts[id].Group(g)
	c.t.Fatalf("%s on %s applied %d, want >= %d", g, id, grp.Applied(), index)
}

func (c *testCluster) staleGet(id string, g GroupID, key string) (string, bool) {
	c.t.Helper()
	grp, _ := c.hosts[id].Group(g)
	e, _, err := grp.Get(context.Background(), "m", []byte(key), false)
	if errors.Is(err, grid.ErrNotFound) {
		return "", false
	}
	if err != nil {
		c.t.Fatalf("get %s on %s: %v", key, id, err)
	}
	return string(e.Value), true
}

func TestClusterWritesLeaderKillCatchUp(t *testing.T) {
	const groups = 4
	c := newTestCluster(t, 3, groups)
	seq := uint64(0)
	// Writes on every partition.
	for g := 0; g < groups; g++ {
		for i := 0; i < 20; i++ {
			seq++
			c.putRetry(GroupID(g), fmt.Sprintf("k%d", i), fmt.Sprintf("v%d-%d", g, i), 7, seq)
		}
	}
	// Kill the leader of group 0; the others elect a new one and keep going.
	old, victim := c.leaderNode(0)
	c.stop(victim)
	newLeader := c.leader(0)
	if newLeader == old {
		t.Fatal("leader did not change after kill")
	}
	var last uint64
	for i := 20; i < 40; i++ {
		seq++
		last = c.putRetry(0, fmt.Sprintf("k%d", i), "after-kill", 7, seq).Version
	}
	// Linearizable read on the new leader sees the writes.
	e, _, err := newLeader.Get(context.Background(), "m", []byte("k39"), true)
	if err != nil || string(e.Value) != "after-kill" {
		t.Fatalf("linearizable get after failover = %q, %v", e.Value, err)
	}
	// Restart the victim: it catches up from its peers (and its own log).
	c.start(victim)
	c.waitApplied(victim, 0, last)
	for i := 0; i < 40; i++ {
		if _, ok := c.staleGet(victim, 0, fmt.Sprintf("k%d", i)); !ok {
			t.Fatalf("restarted %s misses k%d", victim, i)
		}
	}
	// A follower refuses linearizable reads and points at the leader.
	for _, h := range c.hosts {
		grp, _ := h.Group(0)
		if grp.IsLeader() {
			continue
		}
		_, _, err := grp.Get(context.Background(), "m", []byte("k1"), true)
		var nl *grid.NotLeaderError
		if !errors.As(err, &nl) {
			t.Fatalf("follower linearizable read: %v, want NotLeaderError", err)
		}
	}
}

func TestClusterDedupRetriedCommand(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	first := c.putRetry(0, "a", "one", 99, 1)
	// The same (client, seq) again, even with a different payload, returns the
	// first result and changes nothing.
	again := c.putRetry(0, "a", "two", 99, 1)
	if again.Version != first.Version {
		t.Fatalf("retried command applied again: version %d then %d", first.Version, again.Version)
	}
	grp := c.leader(0)
	e, _, err := grp.Get(context.Background(), "m", []byte("a"), true)
	if err != nil || string(e.Value) != "one" {
		t.Fatalf("value after retry = %q, %v", e.Value, err)
	}
}

func TestClusterSnapshotCatchUp(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	victim := "n3"
	c.stop(victim)
	// Write enough that the leader snapshots and compacts past the victim.
	var last uint64
	for i := 0; i < 1500; i++ {
		last = c.putRetry(0, fmt.Sprintf("k%04d", i), fmt.Sprintf("v%d", i), 5, uint64(i+1)).Version
	}
	ldr := c.leader(0)
	if err := ldr.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	c.start(victim)
	c.waitApplied(victim, 0, last)
	for _, k := range []int{0, 750, 1499} {
		v, ok := c.staleGet(victim, 0, fmt.Sprintf("k%04d", k))
		if !ok || v != fmt.Sprintf("v%d", k) {
			t.Fatalf("after snapshot install k%04d = %q %v", k, v, ok)
		}
	}
	// Restarting again: the engine is durable, replay skips applied entries.
	c.stop(victim)
	c.start(victim)
	c.waitApplied(victim, 0, last)
	if v, ok := c.staleGet(victim, 0, "k1499"); !ok || v != "v1499" {
		t.Fatalf("after restart k1499 = %q %v", v, ok)
	}
}

func TestClusterCASAndDelete(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	ctx := context.Background()
	prop := func(cmd *gridpb.Command) *gridpb.Result {
		t.Helper()
		res, err := c.leader(0).Propose(ctx, cmd)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	cas := func(expected uint64, val string) *gridpb.Result {
		return prop(&gridpb.Command{Op: &gridpb.Command_Cas{Cas: &gridpb.CasOp{Map: "m", Key: []byte("x"), ExpectedVersion: expected, Value: []byte(val)}}})
	}
	r1 := cas(0, "a")
	if !r1.Ok {
		t.Fatal("cas on absent key with expected 0 failed")
	}
	if r := cas(0, "b"); r.Ok || r.Version != r1.Version {
		t.Fatalf("cas with stale expectation = %+v", r)
	}
	r2 := cas(r1.Version, "c")
	if !r2.Ok || r2.Version <= r1.Version {
		t.Fatalf("cas with right version = %+v", r2)
	}
	d := prop(&gridpb.Command{Op: &gridpb.Command_Delete{Delete: &gridpb.DeleteOp{Map: "m", Key: []byte("x")}}})
	if !d.Existed {
		t.Fatal("delete of existing key reported absent")
	}
	d = prop(&gridpb.Command{Op: &gridpb.Command_Delete{Delete: &gridpb.DeleteOp{Map: "m", Key: []byte("x")}}})
	if d.Existed {
		t.Fatal("second delete reported existing")
	}
	if r := prop(&gridpb.Command{Op: &gridpb.Command_Put{Put: &gridpb.PutOp{Map: "m", Key: []byte("y"), Value: []byte("v"), Crc: 12345}}}); r.Error != "CHECKSUM" {
		t.Fatalf("put with wrong crc = %+v, want CHECKSUM error", r)
	}
	// The node checks CRCs before proposing, so a mismatch at apply means a
	// damaged entry: nothing is stored and the replica marks itself corrupt.
	for id, eng := range c.engs {
		if _, err := eng.Get(dataKey(0, "m", []byte("y"))); !errors.Is(err, ErrEngineNotFound) {
			t.Fatalf("rejected put left data on %s: %v", id, err)
		}
	}
	if _, _, err := c.leader(0).Get(ctx, "m", []byte("y"), true); !errors.Is(err, grid.ErrChecksum) {
		t.Fatalf("read from a replica that applied a damaged entry: %v", err)
	}
}

// TestClusterCutOffReplica: a replica partitioned away from the others says
// it is cut off (so a watch it serves ends and resumes elsewhere); the
// replicas on the majority side do not, and it recovers after the heal.
func TestClusterCutOffReplica(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	l := c.leader(0)
	lone := ""
	for _, id := range c.ids {
		if g, _ := c.hosts[id].Group(0); g != l {
			lone = id
		}
	}
	if g, _ := c.hosts[lone].Group(0); g.CutOff() {
		t.Fatalf("%s is cut off before any partition", lone)
	}
	c.net.Partition([]string{lone})
	defer c.net.Heal()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, _ := c.hosts[lone].Group(0)
		if g.CutOff() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never reported itself cut off", lone)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, id := range c.ids {
		if id == lone {
			continue
		}
		if g, _ := c.hosts[id].Group(0); g.CutOff() && g.IsLeader() {
			t.Fatalf("leader %s reports itself cut off", id)
		}
	}
	c.net.Heal()
	deadline = time.Now().Add(10 * time.Second)
	for {
		g, _ := c.hosts[lone].Group(0)
		if !g.CutOff() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still cut off after the heal", lone)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leaderNode waits for a leader of group g and returns it with its node's id.
func (c *testCluster) leaderNode(g GroupID) (*Group, string) {
	c.t.Helper()
	ldr := c.leader(g)
	for id, h := range c.hosts {
		if grp, _ := h.Group(g); grp == ldr {
			return ldr, id
		}
	}
	c.t.Fatalf("leader of %s on no running host", g)
	return nil, ""
}
