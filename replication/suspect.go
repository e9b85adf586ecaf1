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
	g.shortenUntilLed(h, addr)
}

// shortenUntilLed sets the group's heartbeat and election timeouts to the
// lease (the shortest hashicorp/raft accepts) until a leader other than
// addr is known, or for five election timeouts, then restores them and
// clears g.suspected. Called with h.mu held, h not closed, and g.suspected
// just set by the caller.
func (g *Group) shortenUntilLed(h *Host, addr string) {
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

// campaignIfLeaderless gives the group "after" to hear of a leader. If
// it has not and is a follower:
//   - a group this process bootstrapped (a new cluster: no leader can
//     exist) has its first voter in the configuration's order campaign at
//     once, as a leadership transfer's target would. Every replica picks
//     the same voter, the table's preferred one, so one campaigns and
//     leaders spread as replicas do.
//   - any other (a restart) shortens its heartbeat and election timeouts
//     to the lease until it hears of a leader (as a suspected leader's
//     followers do). Its election then starts with a pre-vote, which the
//     others refuse while they have a leader: a node that restarts into a
//     led group (whose leader may take seconds to retry it) disturbs
//     nobody, while a cluster that restarted whole elects sooner than its
//     10-20 s election timeout (3.4 s in TestQuietGroupsWholeClusterRestart;
//     what in the restart hurried it was not traced).
func (g *Group) campaignIfLeaderless(h *Host, after time.Duration) {
	select {
	case <-h.stop:
		return
	case <-time.After(after):
	}
	if a, _ := g.raft.LeaderWithID(); a != "" || g.raft.State() != raft.Follower {
		return
	}
	if !g.bootstrapped {
		h.mu.Lock()
		defer h.mu.Unlock()
		if !h.closed && g.suspected.CompareAndSwap(false, true) {
			g.shortenUntilLed(h, "")
		}
		return
	}
	ms, err := g.Members()
	if err != nil {
		return
	}
	first := ""
	for _, m := range ms {
		if m.Voter {
			first = m.ID
			break
		}
	}
	if first == h.cfg.NodeID {
		g.timeoutNow(h, raft.ServerID(h.cfg.NodeID), raft.ServerAddress(""))
	}
}

// timeoutNow hands the group's raft a TimeoutNow request from itself: it
// becomes a candidate at once, without a pre-vote, as a leadership
// transfer's target does.
func (g *Group) timeoutNow(h *Host, id raft.ServerID, addr raft.ServerAddress) {
	ld, ok := g.trans.(localDeliverer)
	if !ok {
		return
	}
	resp := make(chan raft.RPCResponse, 1)
	req := &raft.TimeoutNowRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(id), Addr: []byte(addr)},
	}
	if !ld.deliverLocal(raft.RPC{Command: req, RespChan: resp}, h.stop) {
		return
	}
	select {
	case <-resp:
	case <-h.stop:
	}
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
	if successor != h.cfg.NodeID || g.raft.State() != raft.Follower {
		return
	}
	g.timeoutNow(h, leaderID, leaderAddr)
}
