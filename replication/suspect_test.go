package replication

import (
	"net"
	"sync"
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
	bAddr, stopB := startHeartbeatAnswerer(t)

	aCfg := DefaultGRPCTransportConfig()
	aCfg.LocalID, aCfg.LocalAddr = "a", "127.0.0.1:1"
	aCfg.OnPeerDown = func(addr string) { down.Store(addr) }
	startHeartbeatSender(t, aCfg, bAddr)
	if down.Load() != nil {
		t.Fatal("peer reported down while it answers")
	}
	stopB() // b's process "dies": its connections close
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

// freezingProxy forwards TCP connections to a target; while frozen it
// passes no bytes either way but keeps the connections open, as a paused
// process or a cut-off link does.
type freezingProxy struct {
	lis    net.Listener
	frozen atomic.Bool
	wg     sync.WaitGroup
}

func newFreezingProxy(t *testing.T, target string) *freezingProxy {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezingProxy{lis: lis}
	var conns []net.Conn
	var mu sync.Mutex
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		p.wg.Wait()
	})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			for _, pair := range [][2]net.Conn{{in, out}, {out, in}} {
				p.wg.Add(1)
				go func() {
					defer p.wg.Done()
					p.copy(pair[0], pair[1])
				}()
			}
		}
	}()
	return p
}

// copy forwards src to dst, holding what it read while the proxy is frozen.
func (p *freezingProxy) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for p.frozen.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// The liveness check reports a peer that goes silent while its connection
// stays up, once per silence, and again after it was heard in between.
func TestTransportGRPCReportsSilentPeer(t *testing.T) {
	bAddr, stopB := startHeartbeatAnswerer(t)
	defer stopB()
	proxy := newFreezingProxy(t, bAddr)
	target := proxy.lis.Addr().String()

	var mu sync.Mutex
	var reports []string
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(reports)
	}
	aCfg := DefaultGRPCTransportConfig()
	aCfg.LocalID, aCfg.LocalAddr = "a", "127.0.0.1:1"
	aCfg.LivenessTimeout = 400 * time.Millisecond
	aCfg.OnPeerDown = func(addr string) {
		mu.Lock()
		reports = append(reports, addr)
		mu.Unlock()
	}
	a := startHeartbeatSender(t, aCfg, target)
	time.Sleep(1500 * time.Millisecond) // several liveness timeouts of pings answered
	if n := count(); n != 0 {
		t.Fatalf("a peer that answers was reported %d times", n)
	}
	waitReports := func(want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for count() < want {
			if time.Now().After(deadline) {
				t.Fatalf("%d reports of a silent peer, want %d", count(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for round := 1; round <= 2; round++ {
		proxy.frozen.Store(true)
		waitReports(round)
		time.Sleep(1500 * time.Millisecond) // still silent: no second report
		if n := count(); n != round {
			t.Fatalf("round %d: %d reports during one silence", round, n)
		}
		proxy.frozen.Store(false)
		p, err := a.heartbeatPeer(raft.ServerAddress(target))
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for p.suspected.Load() {
			if time.Now().After(deadline) {
				t.Fatal("the peer answers again, but stays suspected")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range reports {
		if r != target {
			t.Fatalf("reported %q, want %q", r, target)
		}
	}
}

// startHeartbeatAnswerer serves a transport "b" on a loopback port whose
// group 1 answers every heartbeat with success; stop ends its server and
// transport (its connections close, as when its process dies).
func startHeartbeatAnswerer(t *testing.T) (addr string, stop func()) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultGRPCTransportConfig()
	cfg.LocalID, cfg.LocalAddr = "b", lis.Addr().String()
	b, err := NewGRPCTransport(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(ServerOptions()...)
	b.Register(srv)
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	b.Transport(1).(*grpcGroup).SetHeartbeatHandler(func(rpc raft.RPC) { rpc.Respond(&raft.AppendEntriesResponse{Success: true}, nil) })
	var once sync.Once
	return lis.Addr().String(), func() {
		once.Do(func() {
			srv.Stop()
			<-served
			closeNode(t, b)
		})
	}
}

// startHeartbeatSender starts transport cfg (closed when the test ends) and
// sends one heartbeat of group 1 to target, which must answer it.
func startHeartbeatSender(t *testing.T, cfg GRPCTransportConfig, target string) *GRPCTransport {
	a, err := NewGRPCTransport(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeNode(t, a) })
	var resp raft.AppendEntriesResponse
	hb := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{Addr: []byte(cfg.LocalAddr)}, Term: 1}
	if err := a.Transport(1).AppendEntries("b", raft.ServerAddress(target), hb, &resp); err != nil {
		t.Fatal(err)
	}
	return a
}

// Quiet groups (long election timeouts) with a leaderless campaign: a new
// cluster's groups are led by the first voter of each (it campaigns once
// nothing was heard of a leader);
// a replica restarted while its groups have leaders, and not contacted by
// them for a while (the leaders back off retrying it), deposes none of
// them.
func TestLeaderlessCampaign(t *testing.T) {
	timing := DefaultTiming()
	timing.HeartbeatTimeout, timing.ElectionTimeout, timing.LeaderLeaseTimeout = 6*time.Second, 6*time.Second, 3*time.Second
	timing.CommitTimeout, timing.CutOffAfter = 500*time.Millisecond, 6*time.Second
	timing.LeaderlessCampaign = 300 * time.Millisecond
	const groups = 4
	c := newTestClusterTiming(t, 3, groups, timing)
	// The first voter of each configuration (n1: servers() lists n1 first)
	// campaigns; elections by the groups' own timers would pick leaders at
	// random.
	for g := range GroupID(groups) {
		if _, id := c.leaderNode(g); id != "n1" {
			t.Fatalf("%s: led by %s, not by its first voter n1", g, id)
		}
	}
	// Each group's leader and term.
	type led struct {
		id   string
		term uint64
	}
	leaders := func() map[GroupID]led {
		out := map[GroupID]led{}
		for id, h := range c.hosts {
			for g := range GroupID(groups) {
				if grp, ok := h.Group(g); ok && grp.IsLeader() {
					out[g] = led{id, grp.Status().Term}
				}
			}
		}
		return out
	}
	before := leaders()
	victim := "n3"
	c.stop(victim)
	time.Sleep(2 * time.Second) // the leaders' retries of n3 back off meanwhile
	c.start(victim)
	time.Sleep(3*timing.LeaderLeaseTimeout + time.Second) // past the wait and a shortened election timeout, twice
	for g := range GroupID(groups) {
		c.leader(g)
	}
	after := leaders()
	for g, l := range before {
		if l.id == victim {
			continue // it elected again, whoever won
		}
		if after[g] != l {
			t.Errorf("%s: led by %s in term %d before %s restarted, by %s in term %d after", g, l.id, l.term, victim, after[g].id, after[g].term)
		}
	}
}
