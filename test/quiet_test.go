package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestQuietGroupsFailOverWhenLeaderPaused runs nodes with the default
// profile, whose groups are quiet (their own heartbeats 1-2 s apart, an
// election timeout of 10 s), and SIGSTOPs the node leading one partition
// while porcupine-recorded clients work. A stopped process keeps its
// connections open, so only the node-level liveness check (pings on each
// peer's heartbeat stream) can notice it: a survivor must log the stopped
// node as silent, and the partition elect a new leader and acknowledge a
// put while the node is still stopped. Then the
// history must be linearizable (the old leader, resumed, answers nothing
// stale), every acknowledged write present and the replicas equal.
func TestQuietGroupsFailOverWhenLeaderPaused(t *testing.T) {
	const parts = 4
	lc, c := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: parts, Replicas: 3, Profile: "default"}, "lin", "acks")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	h := &history{start: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	lin := c.Map("lin")
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runWorker(ctx, w, lin, []string{"a", "b", "c", "d"}, h, stop)
		}()
	}
	acks := &ackWriter{m: c.Map("acks")}
	wg.Add(1)
	go func() {
		defer wg.Done()
		acks.run(ctx, stop)
	}()
	time.Sleep(2 * time.Second)

	probe := []byte("probe")
	part := grid.PartitionOf("lin", probe, parts)
	var victim string
	eventually(t, 30*time.Second, func() error {
		if victim = partitionLeader(ctx, c, lc, part); victim == "" {
			return errors.New("no leader of the probe's partition yet")
		}
		return nil
	})
	pid := lc.PID(victim)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	defer resume()
	t.Logf("SIGSTOP %s, leader of partition %d", victim, part)

	// The probe's client gives up on an attempt after a second (a stopped
	// node accepts the request and never answers), so it moves on to the
	// new leader. The put must land while the node is still stopped.
	pol := client.DefaultRetryPolicy()
	pol.AttemptTimeout = time.Second
	pc, err := dialCluster(ctx, lc.Addrs(), client.WithRetry(pol))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := pc.Map("lin").Put(pctx, probe, []byte("while paused"))
		pcancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no put to partition %d acknowledged while its leader %s was stopped: %v", part, victim, err)
		}
	}
	t.Logf("partition %d acknowledged a put %v after its leader %s stopped", part, time.Since(stopped).Round(time.Millisecond), victim)
	if now := partitionLeader(ctx, c, lc, part); now == victim {
		t.Fatalf("the stopped node %s still answers as leader of partition %d", victim, part)
	}
	// The stopped node's connections stayed up: only the liveness check
	// can have noticed it (the groups' own election timeout is 10-20 s).
	suspected := false
	for _, id := range lc.IDs() {
		if id == victim {
			continue
		}
		b, err := os.ReadFile(lc.LogPath(id))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "raft peer silent; suspecting its node") && strings.Contains(line, "peer="+lc.Addr(victim)) {
				suspected = true
			}
		}
	}
	if !suspected {
		t.Fatalf("no node logged the stopped %s (%s) as silent", victim, lc.Addr(victim))
	}
	time.Sleep(2 * time.Second)
	resume()
	t.Logf("SIGCONT %s", victim)
	time.Sleep(5 * time.Second)
	close(stop)
	wg.Wait()

	checkLinearizable(t, h, "a partition leader SIGSTOPped with quiet groups")
	acks.check(ctx, t)
	checkReplicasEqual(ctx, t, lc, parts, "lin", "acks")
}

// TestQuietGroupsWholeClusterRestart stops every node of a cluster with
// quiet groups (default profile) at once and starts them again: with no
// peer to suspect, each partition must elect a leader by its own timeouts
// (shortened while it has heard of none), and serve reads.
// (That a single restarted replica deposes no leader is checked in
// replication's TestLeaderlessCampaign, without the manager, which moves
// leaderships to fast disks on its own.)
func TestQuietGroupsWholeClusterRestart(t *testing.T) {
	const parts = 6
	lc, c := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: parts, Replicas: 3, Profile: "default"}, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	m := c.Map("kv")
	for i := range 20 {
		if _, err := m.Put(ctx, []byte(fmt.Sprint("k", i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	allLed := func() error {
		led := map[int32]bool{}
		for _, id := range lc.IDs() {
			sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := c.NodeStatus(sctx, lc.Addr(id))
			scancel()
			if err != nil {
				continue
			}
			for _, g := range st.Groups {
				if g.Partition >= 0 && g.State == "Leader" {
					led[g.Partition] = true
				}
			}
		}
		if len(led) != parts {
			return fmt.Errorf("%d of %d partitions led", len(led), parts)
		}
		return nil
	}
	for _, id := range lc.IDs() {
		if err := lc.Kill(id); err != nil {
			t.Fatal(err)
		}
	}
	restarted := time.Now()
	for _, id := range lc.IDs() {
		if err := lc.StartNode(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 2*time.Minute, allLed)
	t.Logf("after a restart of every node, all %d partitions led again after %v", parts, time.Since(restarted).Round(100*time.Millisecond))
	for i := range 20 {
		if _, _, err := m.Get(ctx, []byte(fmt.Sprint("k", i))); err != nil {
			t.Fatalf("read k%d after the restart: %v", i, err)
		}
	}
}
