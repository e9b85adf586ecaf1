package test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestTxnLinearizableUnderLeaderKill runs concurrent compare-and-swaps and
// multi-key transactions (compares on version, value, existence; Then and
// Else branches) on hash-tag groups of one partition, while that
// partition's leader is SIGKILLed and restarted again and again, and checks
// the history with porcupine. Ambiguous outcomes are recorded as unknown.
func TestTxnLinearizableUnderLeaderKill(t *testing.T) {
	const (
		partitions = 4
		target     = 0 // the partition every group lives in
		mapName    = "txn"
	)
	duration := 10 * time.Second
	if *long {
		duration = 60 * time.Second
	}
	lc, c := startCluster(t, partitions, mapName)
	ctx, cancel := context.WithTimeout(context.Background(), duration+2*time.Minute)
	defer cancel()

	// Hash tags whose keys all land in the target partition.
	var groups []string
	for i := 0; len(groups) < 3; i++ {
		tag := fmt.Sprintf("{g%d}", i)
		if grid.PartitionOf(mapName, []byte(tag+"k0"), partitions) == target {
			groups = append(groups, tag)
		}
	}

	h := &history{start: time.Now()}
	m := c.Map(mapName)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stats txnStats
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runTxnWorker(ctx, w, m, groups, h, &stats, stop)
		}()
	}

	// Nemesis: SIGKILL the partition's leader, wherever it is now.
	nemesis := killLoop(ctx, t, lc, stop, func(int) string { return partitionLeader(ctx, c, lc, target) })

	time.Sleep(duration)
	close(stop)
	kills := <-nemesis
	wg.Wait()
	if kills == 0 {
		t.Fatal("the partition leader was never killed")
	}
	t.Logf("txns %d committed Then / %d Else, CAS %d swapped / %d not, %d ambiguous writes, %d failed reads left out",
		stats.then.Load(), stats.els.Load(), stats.swapped.Load(), stats.notSwapped.Load(), stats.unknown.Load(), stats.failedReads.Load())
	if stats.then.Load() == 0 || stats.els.Load() == 0 || stats.swapped.Load() == 0 {
		t.Fatal("the workload did not exercise both branches and swaps")
	}
	checkHistory(t, h, txnModel(), fmt.Sprintf("%d kills of partition %d's leader", kills, target))
}

type txnStats struct {
	then, els, swapped, notSwapped, unknown, failedReads atomic.Int64
}

// partitionLeader returns the id of the node that leads partition p, or ""
// if no running node says it does.
func partitionLeader(ctx context.Context, c *client.Client, lc *localcluster.Cluster, p int) string {
	for _, id := range lc.IDs() {
		if !lc.Running(id) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := c.NodeStatus(sctx, lc.Addr(id))
		cancel()
		if err != nil {
			continue
		}
		for _, g := range st.Groups {
			if int(g.Partition) == p && g.State == "Leader" {
				return id
			}
		}
	}
	return ""
}

// runTxnWorker issues gets, CAS (and compare-and-delete) and transactions
// with every kind of compare on the groups' keys, recording each.
func runTxnWorker(ctx context.Context, w int, m *client.Map, groups []string, h *history, stats *txnStats, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(w), 7))
	seen := map[string]string{} // last value read per group key, for value compares
	n := 0
	unique := func(g string, k int) string {
		n++
		return fmt.Sprintf("w%d-%d-%s%d", w, n, g, k)
	}
	key := func(g string, k int) []byte { return []byte(fmt.Sprintf("%sk%d", g, k)) }
	// read records a linearizable get and returns the value and version.
	read := func(opCtx context.Context, g string, k int) (string, uint64, bool) {
		call := h.now()
		v, ver, err := m.Get(opCtx, key(g, k))
		if errors.Is(err, client.ErrNotFound) {
			v, ver, err = nil, 0, nil
		}
		if err != nil {
			stats.failedReads.Add(1) // a failed read has no effect: leave it out
			return "", 0, false
		}
		h.record(w, txnInput{group: g, kind: txnGet, key: k}, call, txnOutput{value: string(v)}, false)
		seen[fmt.Sprint(g, k)] = string(v)
		return string(v), ver, true
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		g := groups[rng.IntN(len(groups))]
		k := rng.IntN(txnGroupKeys)
		opCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		switch r := rng.IntN(10); {
		case r < 3:
			read(opCtx, g, k)
		case r < 5:
			cur, ver, ok := read(opCtx, g, k)
			if !ok {
				break
			}
			in := txnInput{group: g, kind: txnCAS, cmps: []txnCmp{{k, cmpVersion, cur}}}
			var swapped bool
			var err error
			call := h.now()
			if rng.IntN(5) == 0 {
				in.then = []txnWrite{{key: k, del: true}}
				swapped, _, err = m.CompareAndDelete(opCtx, key(g, k), ver)
			} else {
				v := unique(g, k)
				in.then = []txnWrite{{key: k, value: v}}
				swapped, _, err = m.CompareAndSwap(opCtx, key(g, k), ver, []byte(v))
			}
			h.record(w, in, call, txnOutput{ok: swapped, unknown: err != nil}, err != nil)
			switch {
			case err != nil:
				stats.unknown.Add(1)
			case swapped:
				stats.swapped.Add(1)
			default:
				stats.notSwapped.Add(1)
			}
		default:
			cur, ver, ok := read(opCtx, g, k)
			if !ok {
				break
			}
			in := txnInput{group: g, kind: txnTxn, cmps: []txnCmp{{k, cmpVersion, cur}}}
			cmps := []client.Cmp{client.VersionIs(key(g, k), ver)}
			switch k2 := rng.IntN(txnGroupKeys); rng.IntN(4) {
			case 0:
				v := seen[fmt.Sprint(g, k2)] // maybe stale, maybe "" (never holds)
				in.cmps = append(in.cmps, txnCmp{k2, cmpValue, v})
				cmps = append(cmps, client.ValueIs(key(g, k2), []byte(v)))
			case 1:
				in.cmps = append(in.cmps, txnCmp{k2, cmpExists, ""})
				cmps = append(cmps, client.Exists(key(g, k2)))
			case 2:
				in.cmps = append(in.cmps, txnCmp{k2, cmpMissing, ""})
				cmps = append(cmps, client.Missing(key(g, k2)))
			}
			var then, els []client.Op
			for i := 0; i < 1+rng.IntN(3); i++ {
				kw := rng.IntN(txnGroupKeys)
				if rng.IntN(5) == 0 {
					in.then = append(in.then, txnWrite{key: kw, del: true})
					then = append(then, client.OpDelete(key(g, kw)))
					continue
				}
				v := unique(g, kw)
				in.then = append(in.then, txnWrite{key: kw, value: v})
				then = append(then, client.OpPut(key(g, kw), []byte(v)))
			}
			if rng.IntN(2) == 0 {
				kw := rng.IntN(txnGroupKeys)
				v := unique(g, kw)
				in.els = append(in.els, txnWrite{key: kw, value: v})
				els = append(els, client.OpPut(key(g, kw), []byte(v)))
			}
			call := h.now()
			succeeded, _, err := m.Txn(opCtx).If(cmps...).Then(then...).Else(els...).Commit()
			h.record(w, in, call, txnOutput{ok: succeeded, unknown: err != nil}, err != nil)
			switch {
			case err != nil:
				stats.unknown.Add(1)
			case succeeded:
				stats.then.Add(1)
			default:
				stats.els.Add(1)
			}
		}
		cancel()
	}
}
