package replication

import (
	"time"

	"github.com/hashicorp/raft"
)

// SuspectPeer tells the host that the node at addr has stopped answering
// (its connection broke: a process that dies is noticed within
// milliseconds, long before a Raft heartbeat timeout). For every local
// follower whose leader is there, one surviving voter of the group (the
// lowest id other than the leader's: every node picks the same one)
// campaigns at once, as the target of a leadership transfer would: the
// other voters grant it their vote although they still know the old
// leader, if its log is as up to date as theirs. Every such follower also
// shortens its heartbeat timeout to the leader lease (the shortest
// hashicorp/raft accepts), so that the group elects someone soon even if
// that campaign fails, and restores it once the group has a leader
// elsewhere. Elections stay safe whatever the timing: a wrong suspicion
// costs one early election; a paused or partitioned node whose connection
// stays up is found by the normal timeouts.
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

// suspectLeader has the group's designated successor campaign, and
// shortens the group's timeouts until a leader other than addr is known
// (or, failing that, for a few election timeouts). Called with h.mu held.
func (g *Group) suspectLeader(addr string, h *Host) {
	if !g.suspected.CompareAndSwap(false, true) {
		return // already waiting for a new leader
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		g.campaignIfSuccessor(addr, h)
	}()
	normal := g.raft.ReloadableConfig()
	fast := normal
	fast.HeartbeatTimeout = g.timing.LeaderLeaseTimeout
	fast.ElectionTimeout = g.timing.LeaderLeaseTimeout
	shortened := fast.HeartbeatTimeout < normal.HeartbeatTimeout && g.raft.ReloadConfig(fast) == nil
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
		if shortened {
			_ = g.raft.ReloadConfig(normal) // a group shut down meanwhile refuses nothing here
		}
	}()
}

// localDeliverer is a group transport that can hand raft an RPC made by
// this node itself.
type localDeliverer interface {
	deliverLocal(rpc raft.RPC, stop <-chan struct{}) bool
}

// campaignIfSuccessor starts an election at once, without a pre-vote and
// as a leadership transfer, if this node is the group's designated
// successor of the suspected leader at addr: the voter with the lowest id
// among the others.
func (g *Group) campaignIfSuccessor(addr string, h *Host) {
	leaderAddr, leaderID := g.raft.LeaderWithID()
	if string(leaderAddr) != addr {
		return // the group moved on meanwhile
	}
	ms, err := g.Members()
	if err != nil {
		return
	}
	successor := ""
	for _, m := range ms {
		if m.Voter && m.ID != string(leaderID) && (successor == "" || m.ID < successor) {
			successor = m.ID
		}
	}
	ld, ok := g.trans.(localDeliverer)
	if successor != h.cfg.NodeID || !ok || g.raft.State() != raft.Follower {
		return
	}
	resp := make(chan raft.RPCResponse, 1)
	req := &raft.TimeoutNowRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(leaderID), Addr: []byte(leaderAddr)},
	}
	if !ld.deliverLocal(raft.RPC{Command: req, RespChan: resp}, h.stop) {
		return
	}
	select {
	case <-resp:
	case <-h.stop:
	}
}
