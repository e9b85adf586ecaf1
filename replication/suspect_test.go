package replication

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
)

// A suspected leader's followers shorten their heartbeat timeout to the
// lease, elect a new leader, and go back to their normal timing; a group
// whose leader is elsewhere is left alone.
func TestSuspectPeerShortensThenRestores(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	old, victim := c.leaderNode(0)
	c.stop(victim)
	timing := TestTiming()
	shortened := 0
	for id, h := range c.hosts {
		h.SuspectPeer("not-a-member") // nobody's leader: changes nothing
		g, _ := h.Group(0)
		if got := g.raft.ReloadableConfig().HeartbeatTimeout; got != timing.HeartbeatTimeout {
			t.Fatalf("%s: heartbeat timeout %v after suspecting a stranger", id, got)
		}
		h.SuspectPeer(victim)
		if g.raft.ReloadableConfig().HeartbeatTimeout == timing.LeaderLeaseTimeout {
			shortened++
		}
	}
	if shortened == 0 {
		t.Fatal("no follower of the suspected leader shortened its heartbeat timeout")
	}
	if c.leader(0) == old {
		t.Fatal("no new leader")
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, h := range c.hosts {
		g, _ := h.Group(0)
		for g.raft.ReloadableConfig().HeartbeatTimeout != timing.HeartbeatTimeout || g.suspected.Load() {
			if time.Now().After(deadline) {
				t.Fatalf("heartbeat timeout still %v after a new leader", g.raft.ReloadableConfig().HeartbeatTimeout)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// The designated successor of a suspected leader (the lowest id among the
// other voters) campaigns at once and wins, although every timeout is a
// minute long and the other follower still knows the old leader.
func TestSuspectPeerSuccessorCampaignsAtOnce(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	_, victim := c.leaderNode(0)
	slow := time.Minute
	for id, h := range c.hosts {
		if id == victim {
			continue
		}
		g, _ := h.Group(0)
		rc := g.raft.ReloadableConfig()
		rc.HeartbeatTimeout, rc.ElectionTimeout = slow, slow
		if err := g.raft.ReloadConfig(rc); err != nil {
			t.Fatal(err)
		}
		g.timing.LeaderLeaseTimeout, g.timing.ElectionTimeout = slow, slow
	}
	// The suspicion acts on followers that know the victim as their leader,
	// and the successor wins only with a log as long as the others': wait
	// until both hold (just after an election they may not yet).
	deadline := time.Now().Add(10 * time.Second)
	vg, _ := c.hosts[victim].Group(0)
	for {
		ready := true
		for id, h := range c.hosts {
			g, _ := h.Group(0)
			if a, _ := g.raft.LeaderWithID(); id != victim && (a == "" || g.raft.LastIndex() != vg.raft.LastIndex()) {
				ready = false
			}
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the followers never caught up with the leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.stop(victim)
	successor := ""
	for id, h := range c.hosts {
		if successor == "" || id < successor {
			successor = id
		}
		h.SuspectPeer(victim)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		g, _ := c.hosts[successor].Group(0)
		if g.IsLeader() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not take over from %s (state %v)", successor, victim, g.raft.State())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for id, h := range c.hosts {
		g, _ := h.Group(0)
		if id != successor && g.IsLeader() {
			t.Fatalf("%s leads too", id)
		}
	}
}

// The gRPC transport reports a peer whose established connection breaks.
func TestTransportGRPCReportsPeerDown(t *testing.T) {
	var down atomic.Value
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bAddr := lis.Addr().String()
	bCfg := DefaultGRPCTransportConfig()
	bCfg.LocalID, bCfg.LocalAddr = "b", bAddr
	b, err := NewGRPCTransport(bCfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(ServerOptions()...)
	b.Register(srv)
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	b.Transport(1).(*grpcGroup).SetHeartbeatHandler(func(rpc raft.RPC) { rpc.Respond(&raft.AppendEntriesResponse{Success: true}, nil) })

	aCfg := DefaultGRPCTransportConfig()
	aCfg.LocalID, aCfg.LocalAddr = "a", "127.0.0.1:1"
	aCfg.OnPeerDown = func(addr string) { down.Store(addr) }
	a, err := NewGRPCTransport(aCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer closeNode(t, a)
	var resp raft.AppendEntriesResponse
	hb := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{Addr: []byte("127.0.0.1:1")}, Term: 1}
	if err := a.Transport(1).AppendEntries("b", raft.ServerAddress(bAddr), hb, &resp); err != nil {
		t.Fatal(err)
	}
	if down.Load() != nil {
		t.Fatal("peer reported down while it answers")
	}
	srv.Stop() // b's process "dies": its connections close
	<-served
	closeNode(t, b)
	deadline := time.Now().Add(10 * time.Second)
	for down.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("a broken connection to the peer was not reported")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := down.Load().(string); got != bAddr {
		t.Fatalf("reported %q, want %q", got, bAddr)
	}
}
