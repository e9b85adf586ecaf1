package test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestCommissioning runs the fleet's life on real processes: three founders
// hold 20k keys; two nodes join and replicas rebalance within the
// bounded-load cap, moving little more than the ideal; one node is drained
// to zero replicas and removed; the metadata leader is killed and its
// replicas are re-created on the survivors after dead-after; it comes back,
// drops its stale partitions and takes a share again. Throughout, concurrent
// clients record a history that porcupine checks, and a writer records
// acknowledged writes; at the end every key is readable with its value,
// every acknowledged write is present, and live replicas are equal.
func TestCommissioning(t *testing.T) {
	const parts, keys = 16, 20000
	lc, c := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: parts, Replicas: 3, JoinToken: "fleet-token"}, "lin", "data", "acks")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	data := c.Map("data")
	loadKeys(ctx, t, c, data, keys)

	// The clients that run throughout.
	h := &history{start: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runWorker(ctx, w, c.Map("lin"), []string{"a", "b", "c", "d"}, h, stop)
		}()
	}
	var acked []string
	var ambiguous atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		acks := c.Map("acks")
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			k := fmt.Sprintf("ack-%05d", i)
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := acks.Put(wctx, []byte(k), []byte(k)); err == nil {
				acked = append(acked, k)
			} else {
				ambiguous.Add(1)
			}
			wcancel()
		}
	}()
	defer func() { // on an early failure, stop the clients before the cluster
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	// 1. Two nodes join; replicas rebalance.
	before, err := c.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var joinWG sync.WaitGroup
	for _, extra := range [][]string{{"--label", "rack=a"}, {"--label", "rack=b"}} {
		joinWG.Add(1)
		go func() {
			defer joinWG.Done()
			if _, err := lc.Join(ctx, "", extra...); err != nil {
				t.Errorf("join: %v", err)
			}
		}()
	}
	joinWG.Wait()
	if t.Failed() {
		t.FailNow()
	}
	start := time.Now()
	after, recs := waitSettled(ctx, t, c, func(tbl *grid.Table, _ []client.NodeInfo) error {
		for _, id := range []string{"n4", "n5"} {
			if len(tbl.Hosts(id)) == 0 {
				return fmt.Errorf("%s holds no replica yet", id)
			}
		}
		return nil
	})
	t.Logf("join: settled in %v at table epoch %d", time.Since(start).Round(time.Millisecond), after.Epoch)
	pol := grid.DefaultPolicy()
	pol.Replicas = 3
	ideal, err := grid.Desired(records(recs), before, pol)
	if err != nil {
		t.Fatal(err)
	}
	stats := ideal.Stats()
	moved := 0
	for p := range after.Partitions {
		for _, r := range after.Partitions[p].Replicas {
			if !slices.Contains(before.Partitions[p].Replicas, r) {
				moved++
			}
		}
	}
	counts := replicaCounts(after)
	t.Logf("join: replicas per node %v (caps %v); replicas moved %d, ideal %d", counts, stats.Cap, moved, stats.Ideal)
	for id, n := range counts {
		if n > stats.Cap[id] {
			t.Errorf("%s holds %d replicas, above its bounded-load cap %d", id, n, stats.Cap[id])
		}
	}
	if float64(moved) > 1.3*float64(stats.Ideal) {
		t.Errorf("moved %d replicas, more than 1.3 × the ideal %d", moved, stats.Ideal)
	}
	checkKeys(ctx, t, data, keys)

	// 2. Drain n2 to zero replicas with the CLI, which waits until the
	// drain is done (not the 10 s request timeout), then retire it.
	start = time.Now()
	out := runCLI(t, ctx, "node", "drain", "n2", "--addr", lc.Addr("n1"))
	if !strings.Contains(out, "n2 holds no replicas") {
		t.Fatalf("zerogrid node drain returned before the drain was done:\n%s", out)
	}
	t.Logf("zerogrid node drain returned after %v", time.Since(start).Round(time.Millisecond))
	waitSettled(ctx, t, c, func(tbl *grid.Table, _ []client.NodeInfo) error {
		if n := len(tbl.Hosts("n2")); n > 0 {
			return fmt.Errorf("n2 still holds %d replicas", n)
		}
		return nil
	})
	t.Logf("drain: n2 empty after %v", time.Since(start).Round(time.Millisecond))
	checkKeys(ctx, t, data, keys)
	if err := c.RemoveNode(ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	// The removed node learns it was retired and sends clients elsewhere;
	// then its operator stops it.
	eventually(t, 30*time.Second, func() error {
		_, err := c.NodeStatus(ctx, lc.Addr("n2"))
		if !errors.Is(err, grid.ErrNodeRetired) {
			return fmt.Errorf("status of removed n2: %v", err)
		}
		return nil
	})
	if err := lc.Terminate("n2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		if lc.Running("n2") {
			return errors.New("n2 still running")
		}
		return nil
	})

	// 3. Kill the metadata leader for good: the metadata survives, and after
	// dead-after its replicas are re-created on the survivors.
	victim := metaLeader(ctx, t, c, lc)
	if err := lc.Kill(victim); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitSettled(ctx, t, c, func(tbl *grid.Table, nodes []client.NodeInfo) error {
		for _, n := range nodes {
			if n.ID == victim && n.State != grid.StateDead {
				return fmt.Errorf("%s is %s", victim, n.State)
			}
		}
		if n := len(tbl.Hosts(victim)); n > 0 {
			return fmt.Errorf("%s still holds %d replicas", victim, n)
		}
		for _, p := range tbl.Partitions {
			if len(p.Replicas) != 3 {
				return fmt.Errorf("partition %d has %d replicas", p.ID, len(p.Replicas))
			}
		}
		return nil
	})
	t.Logf("death: replica count restored %v after killing %s (the metadata leader)", time.Since(start).Round(time.Millisecond), victim)
	checkKeys(ctx, t, data, keys)

	// 4. The dead node comes back: it drops the partitions it no longer
	// holds, becomes active, and takes a share again.
	if err := lc.StartNode(ctx, victim); err != nil {
		t.Fatal(err)
	}
	waitSettled(ctx, t, c, func(tbl *grid.Table, nodes []client.NodeInfo) error {
		for _, n := range nodes {
			if n.ID == victim && n.State != grid.StateActive {
				return fmt.Errorf("%s is %s", victim, n.State)
			}
		}
		st, err := c.NodeStatus(ctx, lc.Addr(victim))
		if err != nil {
			return err
		}
		hosts := tbl.Hosts(victim)
		for _, g := range st.Groups {
			if g.Partition >= 0 && !slices.Contains(hosts, int(g.Partition)) {
				return fmt.Errorf("%s still has stale partition %d", victim, g.Partition)
			}
		}
		if len(hosts) == 0 {
			return fmt.Errorf("%s holds no replica yet", victim)
		}
		return nil
	})
	t.Logf("return: %s active again, stale partitions gone", victim)
	checkKeys(ctx, t, data, keys)

	close(stop)
	wg.Wait()
	checkLinearizable(t, h, "join 2, drain 1, kill 1")
	for _, k := range acked {
		eventually(t, 30*time.Second, func() error {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			v, _, err := c.Map("acks").Get(rctx, []byte(k))
			if err == nil && string(v) != k {
				return fmt.Errorf("acknowledged write %s reads %q", k, v)
			}
			return err
		})
	}
	t.Logf("acknowledged writes: %d of %d present (%d ambiguous not checked)", len(acked), len(acked), ambiguous.Load())
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
	checkReplicasEqual(ctx, t, lc, parts, "lin", "data", "acks")
}

// loadKeys writes k00000.. with value v<i>: keys are grouped by partition
// and each group is committed as unconditional transactions of up to 128
// puts, from 8 writers, each retried until acknowledged (a retry rewrites
// the same values).
func loadKeys(ctx context.Context, t *testing.T, c *client.Client, m *client.Map, n int) {
	t.Helper()
	start := time.Now()
	tbl, err := c.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byPart := map[int][]client.Op{}
	for i := 0; i < n; i++ {
		k := []byte(fmt.Sprintf("k%05d", i))
		p := grid.PartitionOf(m.Name(), k, tbl.NumPartitions())
		byPart[p] = append(byPart[p], client.OpPut(k, []byte(fmt.Sprintf("v%05d", i))))
	}
	batches := make(chan []client.Op, 1024)
	for _, ops := range byPart {
		for len(ops) > 0 {
			k := min(128, len(ops))
			batches <- ops[:k]
			ops = ops[k:]
		}
	}
	close(batches)
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ops := range batches {
				for attempt := 0; ; attempt++ {
					wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					_, _, err := m.Txn(wctx).Then(ops...).Commit()
					cancel()
					if err == nil {
						break
					}
					if attempt == 20 || ctx.Err() != nil {
						failed.Store(fmt.Errorf("load batch: %w", err))
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %d keys in %v", n, time.Since(start).Round(time.Millisecond))
}

// checkKeys reads the whole map back and checks every key has its value.
func checkKeys(ctx context.Context, t *testing.T, m *client.Map, n int) {
	t.Helper()
	eventually(t, 60*time.Second, func() error {
		seen := make([]bool, n)
		count := 0
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		err := m.Scan(sctx, nil, func(e client.Entry) error {
			var i int
			if _, err := fmt.Sscanf(string(e.Key), "k%05d", &i); err != nil || i < 0 || i >= n {
				return fmt.Errorf("unexpected key %q", e.Key)
			}
			if want := fmt.Sprintf("v%05d", i); string(e.Value) != want {
				return fmt.Errorf("key %s reads %q, want %q", e.Key, e.Value, want)
			}
			if !seen[i] {
				seen[i] = true
				count++
			}
			return nil
		})
		if err != nil {
			return err
		}
		if count != n {
			return fmt.Errorf("%d of %d keys present", count, n)
		}
		return nil
	})
}

// waitSettled waits until cond holds, no replica move is in flight, and the
// placement the cluster would compute from its records needs no move.
func waitSettled(ctx context.Context, t *testing.T, c *client.Client, cond func(*grid.Table, []client.NodeInfo) error) (*grid.Table, []client.NodeInfo) {
	t.Helper()
	var tbl *grid.Table
	var nodes []client.NodeInfo
	eventually(t, 3*time.Minute, func() error {
		var err error
		if tbl, err = c.Table(ctx); err != nil {
			return err
		}
		if nodes, err = c.Nodes(ctx); err != nil {
			return err
		}
		if err := cond(tbl, nodes); err != nil {
			return err
		}
		for _, p := range tbl.Partitions {
			if p.Moving() {
				return fmt.Errorf("partition %d is moving (+%s -%s)", p.ID, p.Learner, p.Leaving)
			}
		}
		pol := grid.DefaultPolicy()
		pol.Replicas = tbl.Replicas
		plan, err := grid.Desired(records(nodes), tbl, pol)
		if err != nil {
			return err
		}
		if len(plan.Moves) > 0 {
			return fmt.Errorf("%d moves still planned, e.g. %+v", len(plan.Moves), plan.Moves[0])
		}
		return nil
	})
	return tbl, nodes
}

// metaLeader finds the node leading the metadata group.
func metaLeader(ctx context.Context, t *testing.T, c *client.Client, lc *localcluster.Cluster) string {
	t.Helper()
	var leader string
	eventually(t, 30*time.Second, func() error {
		for _, id := range lc.IDs() {
			if !lc.Running(id) {
				continue
			}
			st, err := c.NodeStatus(ctx, lc.Addr(id))
			if err != nil {
				continue
			}
			for _, g := range st.Groups {
				if g.Partition < 0 && g.State == "Leader" {
					leader = id
					return nil
				}
			}
		}
		return fmt.Errorf("no metadata leader")
	})
	return leader
}

func records(nodes []client.NodeInfo) []grid.NodeRecord {
	out := make([]grid.NodeRecord, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.NodeRecord)
	}
	return out
}

func replicaCounts(t *grid.Table) map[string]int {
	out := map[string]int{}
	for _, p := range t.Partitions {
		for _, r := range p.Replicas {
			out[r]++
		}
	}
	return out
}
