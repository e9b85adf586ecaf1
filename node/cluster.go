package node

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// clusterService implements the Cluster gRPC service: joins, load reports,
// node listing and operations (at the metadata leader), and partition
// membership changes (at the partition leader).
type clusterService struct {
	gridpb.UnimplementedClusterServer
	s *service
}

// NodeView is one row of `zerogrid nodes`: the record and how long the
// metadata leader has not heard from the node.
type NodeView struct {
	grid.NodeRecord
	SilentMS int64 `json:"silent_ms"`
}

// atMetaLeader runs local on the metadata leader, or forwards the request
// there with call.
func (c *clusterService) atMetaLeader(ctx context.Context, local func() error, call func(context.Context, gridpb.ClusterClient) error) error {
	if c.s.n.meta.IsLeader() {
		return local()
	}
	if forwarded(ctx) {
		return fmt.Errorf("%w: metadata leadership moved while forwarding", grid.ErrNoLeader)
	}
	return c.s.toMetaLeader(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
		return call(ctx, gridpb.NewClusterClient(conn))
	})
}

func (c *clusterService) Join(ctx context.Context, req *gridpb.JoinRequest) (*gridpb.JoinResponse, error) {
	var resp *gridpb.JoinResponse
	err := c.atMetaLeader(ctx, func() (err error) {
		resp, err = c.s.n.mgr.admit(ctx, req)
		return err
	}, func(ctx context.Context, cc gridpb.ClusterClient) (err error) {
		resp, err = cc.Join(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (c *clusterService) Report(ctx context.Context, req *gridpb.ReportRequest) (*gridpb.ReportResponse, error) {
	var resp *gridpb.ReportResponse
	err := c.atMetaLeader(ctx, func() (err error) {
		resp, err = c.s.n.mgr.report(ctx, req)
		return err
	}, func(ctx context.Context, cc gridpb.ClusterClient) (err error) {
		resp, err = cc.Report(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (c *clusterService) Nodes(ctx context.Context, req *gridpb.NodesRequest) (*gridpb.NodesResponse, error) {
	var resp *gridpb.NodesResponse
	err := c.atMetaLeader(ctx, func() error {
		raw, err := json.Marshal(c.s.n.mgr.views())
		resp = &gridpb.NodesResponse{NodesJson: raw}
		return err
	}, func(ctx context.Context, cc gridpb.ClusterClient) (err error) {
		resp, err = cc.Nodes(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (c *clusterService) NodeOp(ctx context.Context, req *gridpb.NodeOpRequest) (*gridpb.NodeOpResponse, error) {
	var resp *gridpb.NodeOpResponse
	err := c.atMetaLeader(ctx, func() (err error) {
		resp, err = c.s.n.mgr.nodeOp(ctx, req.NodeId, req.Op)
		return err
	}, func(ctx context.Context, cc gridpb.ClusterClient) (err error) {
		resp, err = cc.NodeOp(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Membership reads or changes the Raft configuration of one partition. Only
// the partition's leader answers; others say who leads. Every change is
// idempotent, so the reconciler may repeat a step whose outcome it did not
// see.
func (c *clusterService) Membership(ctx context.Context, req *gridpb.MembershipRequest) (*gridpb.MembershipResponse, error) {
	g, err := c.s.group(int(req.Partition))
	if err != nil {
		return nil, err
	}
	if !g.IsLeader() {
		id, addr := g.Leader()
		return nil, &grid.NotLeaderError{Partition: int(req.Partition), LeaderID: id, LeaderAddr: addr}
	}
	current, err := g.Members()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: read configuration: %w", grid.ErrAmbiguous, g.ID(), err)
	}
	find := func(id string) (replication.Member, bool) {
		for _, s := range current {
			if s.ID == id {
				return s, true
			}
		}
		return replication.Member{}, false
	}
	var change func() error
	switch req.Op {
	case "get":
	case "add_learner":
		if req.NodeId == "" || req.Addr == "" {
			return nil, fmt.Errorf("%w: add_learner needs a node id and an address", grid.ErrBadRequest)
		}
		if _, ok := find(req.NodeId); !ok {
			change = func() error { return g.AddLearner(ctx, req.NodeId, req.Addr) }
		}
	case "promote":
		s, ok := find(req.NodeId)
		if !ok {
			return nil, fmt.Errorf("%w: %s is not in partition %d's configuration", grid.ErrBadRequest, req.NodeId, req.Partition)
		}
		if !s.Voter {
			change = func() error { return g.Promote(ctx, s.ID, s.Addr) }
		}
	case "remove":
		if req.NodeId == c.s.n.cfg.ID {
			return nil, fmt.Errorf("%w: the leader of partition %d cannot remove itself; transfer leadership first", grid.ErrBadRequest, req.Partition)
		}
		if _, ok := find(req.NodeId); ok {
			change = func() error { return g.RemoveMember(ctx, req.NodeId) }
		}
	case "transfer":
		var to replication.Member
		if req.NodeId != "" {
			s, ok := find(req.NodeId)
			if !ok || !s.Voter {
				return nil, fmt.Errorf("%w: %s is not a voter of partition %d", grid.ErrBadRequest, req.NodeId, req.Partition)
			}
			to = s
		}
		change = func() error { return g.TransferLeadership(to.ID, to.Addr) }
	default:
		return nil, fmt.Errorf("%w: unknown membership operation %q", grid.ErrBadRequest, req.Op)
	}
	if change != nil {
		if err := change(); err != nil {
			return nil, fmt.Errorf("%w: partition %d %s %s: %w", grid.ErrAmbiguous, req.Partition, req.Op, req.NodeId, err)
		}
		if now, err := g.Members(); err == nil {
			current = now
		}
	}
	lid, _ := g.Leader()
	resp := &gridpb.MembershipResponse{Leader: lid, Applied: g.Applied()}
	for _, s := range current {
		resp.Members = append(resp.Members, &gridpb.Member{Id: s.ID, Addr: s.Addr, Voter: s.Voter})
	}
	return resp, nil
}

// join asks a running member to admit this node, trying each join address.
func (n *Node) join(ctx context.Context) error {
	rec := grid.NodeRecord{Node: grid.Node{ID: n.cfg.ID, Addr: n.addr}, Caps: n.caps, State: grid.StateJoining}
	raw, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("node: encode join record: %w", err)
	}
	// Try every address in turn until one admits or refuses this node; a
	// cluster still electing its leaders is retried for a while.
	deadline := time.Now().Add(30 * time.Second)
	var errs []error
	for attempt := 0; ; attempt++ {
		errs = errs[:0]
		for _, addr := range n.cfg.Join {
			err := n.callPeer(ctx, addr, func(ctx context.Context, cc *grpc.ClientConn) error {
				_, err := gridpb.NewClusterClient(cc).Join(ctx, &gridpb.JoinRequest{Token: n.cfg.JoinToken, RecordJson: raw})
				return gridpb.FromStatus(err)
			})
			if err == nil {
				n.log.Info("joined the cluster", "via", addr)
				return nil
			}
			// A refusal is final: another member would refuse the same way.
			if errors.Is(err, grid.ErrJoinRefused) || errors.Is(err, grid.ErrNodeExists) || errors.Is(err, grid.ErrBadRequest) {
				return fmt.Errorf("node: join through %s: %w", addr, err)
			}
			errs = append(errs, fmt.Errorf("join through %s: %w", addr, err))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second)):
		}
	}
	return fmt.Errorf("node: no member admitted this node: %w", errors.Join(errs...))
}

// callPeer runs call over a fresh connection to addr with a short timeout.
func (n *Node) callPeer(ctx context.Context, addr string, call func(context.Context, *grpc.ClientConn) error) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(n.sec.dialCreds()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer cc.Close()
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return call(cctx, cc)
}

// agentLoop is every node's part in commissioning: it reports load to the
// metadata leader and keeps the partitions it hosts in step with the table.
func (n *Node) agentLoop(ctx context.Context) {
	tick := time.NewTicker(n.cfg.reportInterval())
	defer tick.Stop()
	report, resync := true, true
	var synced time.Time
	for {
		changed := n.meta.Meta().TableChanged()
		if rec, ok := n.meta.Meta().Node(n.cfg.ID); ok {
			n.noteRemoved(string(rec.State))
		}
		// The partitions are synced with the table when it changes, after
		// a failed sync, and every groupSyncInterval besides (listing the
		// partitions on disk every report was a few % of an idle node's
		// CPU at 256 partitions).
		if resync || time.Since(synced) >= n.cfg.groupSyncInterval() {
			if err := n.syncGroups(ctx); err != nil && ctx.Err() == nil {
				n.log.Warn("sync partitions with the table", "err", err)
			} else {
				resync, synced = false, time.Now()
			}
		}
		if report {
			n.sendReport(ctx)
		}
		// A new table (a replica move) is acted on at once; reports keep
		// their interval.
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			report = true
		case <-changed:
			report, resync = false, true
		}
	}
}

// syncGroups opens the partitions the committed table asks this node to
// host and retires those it no longer hosts. A partition leaves the table
// only after its Raft group has removed this node, so deleting its data
// then is safe.
func (n *Node) syncGroups(ctx context.Context) error {
	t := n.meta.Meta().SharedTable()
	if t == nil {
		return nil
	}
	want := map[replication.GroupID]bool{}
	for _, p := range t.Hosts(n.cfg.ID) {
		want[replication.GroupID(p)] = true
	}
	var errs []error
	onDisk, err := n.host.OnDisk()
	if err != nil {
		return err
	}
	for _, g := range onDisk {
		if g == replication.MetaGroup || want[g] {
			continue
		}
		n.log.Info("retiring partition replica", "partition", uint32(g))
		if err := n.host.RemoveGroup(ctx, g); err != nil {
			errs = append(errs, err)
		}
	}
	for _, g := range n.host.Groups() {
		if id := g.ID(); id != replication.MetaGroup && !want[id] {
			if err := n.host.RemoveGroup(ctx, id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for g := range want {
		if _, ok := n.host.Group(g); ok {
			continue
		}
		// No bootstrap: the partition's leader sends this replica its
		// configuration and data (log entries or a snapshot).
		if err := n.openOrRebuild(ctx, g, t.Partitions[g].Replicas); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sendReport sends this node's capabilities and load to the metadata leader.
func (n *Node) sendReport(ctx context.Context) {
	capsRaw, err := json.Marshal(n.caps)
	if err != nil {
		return
	}
	loadRaw, err := json.Marshal(n.load())
	if err != nil {
		return
	}
	req := &gridpb.ReportRequest{NodeId: n.cfg.ID, Addr: n.addr, CapsJson: capsRaw, LoadJson: loadRaw, TableEpoch: n.table().Epoch,
		Quarantined: n.integrity.quarantined()}
	var resp *gridpb.ReportResponse
	call := func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		rctx, cancel := context.WithTimeout(ctx, 2*n.cfg.reportInterval()+time.Second)
		defer cancel()
		resp, err = gridpb.NewClusterClient(cc).Report(rctx, req)
		return gridpb.FromStatus(err)
	}
	if n.meta.IsLeader() {
		resp, err = n.mgr.report(ctx, req)
	} else if id, addr := n.meta.Leader(); id != "" {
		err = n.withConn(ctx, addr, call)
	} else {
		// No metadata leader known here (this node may have been cut off
		// from the metadata group): ask the other nodes in the table.
		err = grid.ErrNoLeader
		for _, nd := range n.table().Nodes {
			if nd.ID == n.cfg.ID {
				continue
			}
			if err = n.withConn(ctx, nd.Addr, call); err == nil {
				break
			}
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			n.log.Debug("load report", "err", err)
		}
		return
	}
	n.noteRemoved(resp.State)
	if resp.Message != "" {
		if old := n.told.Swap(&resp.Message); old == nil || *old != resp.Message {
			n.log.Warn(resp.Message, "state", resp.State)
		}
	}
}

func (n *Node) withConn(ctx context.Context, addr string, call func(context.Context, *grpc.ClientConn) error) error {
	cc, err := n.conns.get(addr)
	if err != nil {
		return err
	}
	return call(metadata.AppendToOutgoingContext(ctx, forwardedKey, n.cfg.ID), cc)
}

// load is this node's current load report.
func (n *Node) load() grid.Load {
	l := grid.Load{RSS: rssBytes(), DiskUsed: n.diskUsed.get(), DiskLow: n.disk.low.Load(), ReportedAt: time.Now()}
	l.CPU = n.cpu.percent()
	for _, g := range n.host.Groups() {
		if g.ID() == replication.MetaGroup {
			continue
		}
		l.Replicas++
		if g.IsLeader() {
			l.Leaders++
		}
		// Entries committed but not yet applied here.
		l.MaxAppliedLag = max(l.MaxAppliedLag, g.ApplyLag())
	}
	return l
}

// cpuMeter turns the process's CPU time into a percentage of one core
// between two reports.
type cpuMeter struct {
	mu       sync.Mutex
	lastWall time.Time
	lastCPU  time.Duration
}

func (c *cpuMeter) percent() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var pct float64
	if !c.lastWall.IsZero() {
		if wall := now.Sub(c.lastWall); wall > 0 {
			pct = 100 * float64(cpu-c.lastCPU) / float64(wall)
		}
	}
	c.lastWall, c.lastCPU = now, cpu
	return pct
}

// rssBytes is the process's resident set size (0 where /proc is missing).
func rssBytes() uint64 {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, rss uint64
	if _, err := fmt.Sscan(string(raw), &size, &rss); err != nil {
		return 0
	}
	return rss * uint64(os.Getpagesize())
}

// tokenHash is what the metadata group stores of a join token.
func tokenHash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

func tokenMatches(secret []byte, token string) bool {
	return len(secret) == sha256.Size && subtle.ConstantTimeCompare(secret, tokenHash(token)) == 1
}

// raftMethods prefixes the Raft transport's methods, which a retired node
// still answers (its groups may be shutting down).
const raftMethods = "/zerogrid.v1.Raft/"

func (n *Node) refuseIfRetired(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := n.retiredErr(info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (n *Node) refuseStreamIfRetired(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := n.retiredErr(info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

func (n *Node) retiredErr(method string) error {
	if !n.retired.Load() || strings.HasPrefix(method, raftMethods) {
		return nil
	}
	return fmt.Errorf("%w: node %s: ask another node", grid.ErrNodeRetired, n.cfg.ID)
}

// noteRemoved retires this node once the cluster says it was removed,
// either in a report's answer or in the node records it replicated.
func (n *Node) noteRemoved(state string) {
	if state == string(grid.StateRemoved) && !n.retired.Swap(true) {
		n.log.Warn("this node was removed from the cluster: it refuses requests from now on; stop it, wipe its data dir, and join again to reuse it")
	}
}
