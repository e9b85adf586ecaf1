package replication

import (
	"sync/atomic"
	"time"
)

// Raft log retention in bytes. hashicorp/raft bounds a group's log in
// entries: a snapshot once SnapshotThreshold entries follow the last one
// (checked every SnapshotInterval), then all but TrailingLogs entries are
// dropped. With large values that is no bound at all (2048 entries of
// 1 MiB are 2 GiB). Once a second the host looks at what each group
// appended: it lowers the group's TrailingLogs and SnapshotThreshold so
// that, at the recent entry size, each holds about half of MaxLogBytes,
// and takes a snapshot itself once half of MaxLogBytes was appended since
// the last one (raft's own check may be half a minute away): the append
// that crosses that mark wakes the check at once.

// retentionEvery is how often the host checks its groups' logs.
const retentionEvery = time.Second

// minTrailingLogs keeps a few entries after a snapshot whatever their
// size, so that a follower a little behind is sent entries, not a snapshot.
const minTrailingLogs = 8

// retention is one group's state for the check (used by the host's
// retention goroutine only, but snapping).
type retention struct {
	seenBytes, seenEntries int64   // the counters at the last check
	avg                    float64 // recent bytes per entry (moving average)
	atSnapshot             int64   // appended bytes at the last snapshot
	snapshots              uint64  // the state machine's snapshot count then
	trailing, threshold    uint64  // what was last set (0: raft's own)
	snapping               atomic.Bool
}

func (h *Host) retentionLoop() {
	t := time.NewTicker(retentionEvery)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		case <-h.retentionKick:
		}
		for _, g := range h.Groups() {
			g.checkRetention(h)
		}
	}
}

// checkRetention adjusts one group's log bounds and snapshots it when
// its log grew past half its byte budget.
func (g *Group) checkRetention(h *Host) {
	limit := g.timing.MaxLogBytes
	if limit <= 0 || g.glog == nil {
		return
	}
	r := &g.ret
	total, entries := g.glog.appendedBytes.Load(), g.glog.appendedEntries.Load()
	if d := entries - r.seenEntries; d > 0 {
		size := float64(total-r.seenBytes) / float64(d)
		if r.avg == 0 {
			r.avg = size
		} else {
			r.avg = 0.7*r.avg + 0.3*size
		}
	}
	r.seenBytes, r.seenEntries = total, entries
	if r.avg > 0 {
		fit := func(ceiling uint64) uint64 {
			n := uint64(float64(limit) / 2 / r.avg)
			return min(max(n, minTrailingLogs), ceiling)
		}
		trailing, threshold := fit(g.timing.TrailingLogs), fit(g.timing.SnapshotThreshold)
		// Reloaded only on a change of more than a quarter: the moving
		// average wanders with every check.
		far := func(want, set uint64) bool { return set == 0 || 4*max(want, set) > 5*min(want, set) }
		if far(trailing, r.trailing) || far(threshold, r.threshold) {
			rc := g.raft.ReloadableConfig()
			rc.TrailingLogs, rc.SnapshotThreshold = trailing, threshold
			if g.raft.ReloadConfig(rc) == nil {
				r.trailing, r.threshold = trailing, threshold
			}
		}
	}
	if n := g.sm.snapshots.Load(); n != r.snapshots {
		r.snapshots, r.atSnapshot = n, total // raft took one by itself
	}
	defer func() { g.glog.kickAt.Store(r.atSnapshot + limit/2 + 1) }()
	if total-r.atSnapshot <= limit/2 || !r.snapping.CompareAndSwap(false, true) {
		return
	}
	r.atSnapshot = total
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		r.snapping.Store(false)
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer r.snapping.Store(false)
		_ = g.raft.Snapshot().Error() // nothing new, or shut down: the next check sees
	}()
}
