package replication

import (
	"time"

	"github.com/hashicorp/raft"
)

// SuspectPeer tells the host that the node at addr has stopped answering
// (its connection broke: a process that dies is noticed within
// milliseconds, long before a Raft heartbeat timeout). Every local follower
// whose leader is there shortens its heartbeat timeout to the leader lease
// (the shortest hashicorp/raft accepts), so that it campaigns once its
// last contact is older than that, and restores it once the group has a
// leader elsewhere. Elections stay safe whatever the timeouts: a wrong
// suspicion costs at most an early election; a paused or partitioned node
// whose connection stays up is found by the normal timeouts.
func (h *Host) SuspectPeer(addr string) {
	// Held throughout, so that Close (which sets closed under mu) never
	// waits on h.wg while a goroutine is being added.
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	for _, g := range h.groups {
		if g.raft.State() == raft.Follower {
			if a, _ := g.raft.LeaderWithID(); string(a) == addr {
				g.suspectLeader(addr, h)
			}
		}
	}
}

// suspectLeader shortens the group's timeouts until a leader other than
// addr is known (or, failing that, for a few election timeouts). Called
// with h.mu held.
func (g *Group) suspectLeader(addr string, h *Host) {
	if !g.suspected.CompareAndSwap(false, true) {
		return // already waiting for a new leader
	}
	normal := g.raft.ReloadableConfig()
	fast := normal
	fast.HeartbeatTimeout = g.timing.LeaderLeaseTimeout
	fast.ElectionTimeout = g.timing.LeaderLeaseTimeout
	if fast.HeartbeatTimeout >= normal.HeartbeatTimeout || g.raft.ReloadConfig(fast) != nil {
		g.suspected.Store(false)
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer g.suspected.Store(false)
		deadline := time.Now().Add(5 * g.timing.ElectionTimeout)
		t := time.NewTicker(g.timing.LeaderLeaseTimeout / 10)
		defer t.Stop()
		for time.Now().Before(deadline) {
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
			if a, _ := g.raft.LeaderWithID(); a != "" && string(a) != addr {
				break
			}
		}
		_ = g.raft.ReloadConfig(normal) // a group shut down meanwhile refuses nothing here
	}()
}
