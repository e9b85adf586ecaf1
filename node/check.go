package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// integrityService implements the Integrity gRPC service: cross-replica
// checks (any node coordinates), the check marker (at a partition's
// leader), a replica's digest, and quarantine on request.
type integrityService struct {
	gridpb.UnimplementedIntegrityServer
	s *service
}

// checkParallel bounds the partitions one check works on at once.
const checkParallel = 4

// digestWait bounds how long a check waits for one replica's digest.
const digestWait = 30 * time.Second

func (c *integrityService) Mark(ctx context.Context, req *gridpb.MarkRequest) (*gridpb.MarkResponse, error) {
	g, err := c.s.group(int(req.Partition))
	if err != nil {
		return nil, err
	}
	res, err := c.s.propose(ctx, g, &gridpb.WriteHeader{}, &gridpb.Command{Op: &gridpb.Command_Check{Check: &gridpb.CheckOp{CheckId: req.CheckId}}})
	if err != nil {
		return nil, err
	}
	return &gridpb.MarkResponse{Index: res.Version}, nil
}

func (c *integrityService) Digest(_ context.Context, req *gridpb.DigestRequest) (*gridpb.DigestResponse, error) {
	n := c.s.n
	id := replication.GroupID(req.Partition)
	d := &gridpb.ReplicaDigest{Node: n.cfg.ID}
	if reason, bad := n.host.QuarantineReason(id); bad {
		d.State, d.Error = "quarantined", reason
		return &gridpb.DigestResponse{Digest: d}, nil
	}
	g, err := c.s.group(int(req.Partition))
	if err != nil {
		return nil, err
	}
	r, ok := n.host.Digest(id, req.CheckId)
	switch {
	case ok && r.Done && r.Err != "":
		d.State, d.Error = "missed", r.Err
	case ok && r.Done:
		d.State, d.Digest, d.Entries, d.CrcErrors = "done", r.Digest, r.Entries, r.CRCErrors
	case ok, g.Applied() < req.Index:
		d.State = "pending"
	default:
		// Applied past the marker without digesting it: the marker was
		// replayed from a log this replica had already applied.
		d.State, d.Error = "missed", "this replica applied the check marker before it restarted"
	}
	return &gridpb.DigestResponse{Digest: d}, nil
}

func (c *integrityService) Quarantine(ctx context.Context, req *gridpb.QuarantineRequest) (*gridpb.QuarantineResponse, error) {
	n := c.s.n
	id := replication.GroupID(req.Partition)
	if _, bad := n.host.QuarantineReason(id); bad {
		return &gridpb.QuarantineResponse{}, nil
	}
	if _, err := c.s.group(int(req.Partition)); err != nil {
		return nil, err
	}
	reason, err := c.confirmDiffers(ctx, req)
	if err != nil {
		n.log.Warn("quarantine request refused", "partition", req.Partition, "asked_reason", req.Reason, "err", err)
		return nil, err
	}
	if err := n.integrity.quarantine(ctx, id, "check: "+reason, nil); err != nil {
		return nil, err
	}
	return &gridpb.QuarantineResponse{}, nil
}

// confirmDiffers checks a quarantine request's evidence itself: this
// replica's own digest for the named check fails its CRC32Cs, or differs
// from a digest that a majority of the partition's replicas report for the
// same check. Whoever asks is trusted for nothing but the check id.
func (c *integrityService) confirmDiffers(ctx context.Context, req *gridpb.QuarantineRequest) (string, error) {
	n := c.s.n
	id := replication.GroupID(req.Partition)
	if req.CheckId == 0 {
		return "", fmt.Errorf("%w: a quarantine must name the check whose digests show this replica differs", grid.ErrRefused)
	}
	mine := c.ownDigest(ctx, id, req.CheckId, req.Index)
	if !mine.Done || mine.Err != "" {
		return "", fmt.Errorf("%w: this replica has no digest for check %016x (%s)", grid.ErrRefused, req.CheckId, cmp.Or(mine.Err, "not taken"))
	}
	if mine.CRCErrors > 0 {
		return fmt.Sprintf("%d entries fail their CRC32C at index %d", mine.CRCErrors, req.Index), nil
	}
	t := n.table()
	if int(req.Partition) >= len(t.Partitions) {
		return "", fmt.Errorf("%w: %d", grid.ErrBadPartition, req.Partition)
	}
	p := t.Partitions[req.Partition]
	count := map[uint64][]string{}
	for _, other := range p.Replicas {
		if other == n.cfg.ID {
			continue
		}
		if d := c.replicaDigest(ctx, t, other, p.ID, req.CheckId, req.Index); d.State == "done" && d.CrcErrors == 0 {
			count[d.Digest] = append(count[d.Digest], other)
		}
	}
	for dg, holders := range count {
		if dg != mine.Digest && 2*len(holders) > len(p.Replicas) {
			return fmt.Sprintf("digest %016x at index %d differs from %016x, held by %s of %d replicas",
				mine.Digest, req.Index, dg, strings.Join(holders, ", "), len(p.Replicas)), nil
		}
	}
	return "", fmt.Errorf("%w: this replica's digest %016x at index %d is not contradicted by a majority of the partition's %d replicas",
		grid.ErrRefused, mine.Digest, req.Index, len(p.Replicas))
}

// ownDigest waits (up to digestWait) for this replica's digest of a check
// whose marker was committed at index; it returns at once if the replica
// has applied past the marker without taking the digest.
func (c *integrityService) ownDigest(ctx context.Context, id replication.GroupID, checkID, index uint64) replication.DigestResult {
	deadline := time.Now().Add(digestWait)
	for {
		r, ok := c.s.n.host.Digest(id, checkID)
		if ok && r.Done || time.Now().After(deadline) {
			return r
		}
		if g, open := c.s.n.host.Group(id); !ok && (!open || g.Applied() >= index) {
			return r
		}
		select {
		case <-ctx.Done():
			return r
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *integrityService) Check(ctx context.Context, req *gridpb.CheckRequest) (*gridpb.CheckResponse, error) {
	t := c.s.n.table()
	parts := req.Partitions
	if len(parts) == 0 {
		for p := range t.Partitions {
			parts = append(parts, uint32(p))
		}
	}
	for _, p := range parts {
		if int(p) >= len(t.Partitions) {
			return nil, fmt.Errorf("%w: %d (cluster has %d)", grid.ErrBadPartition, p, len(t.Partitions))
		}
	}
	out := make([]*gridpb.PartitionCheck, len(parts))
	sem := make(chan struct{}, checkParallel)
	var wg sync.WaitGroup
	for i, p := range parts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i] = c.checkPartition(ctx, t, t.Partitions[p], !req.NoRepair)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &gridpb.CheckResponse{Partitions: out}, nil
}

// checkPartition marks one applied index through the partition's Raft
// group, collects every replica's digest at that index and compares them.
func (c *integrityService) checkPartition(ctx context.Context, t *grid.Table, p grid.Partition, repair bool) *gridpb.PartitionCheck {
	n := c.s.n
	pc := &gridpb.PartitionCheck{Partition: uint32(p.ID)}
	checkID := rand.Uint64()
	err := n.atPartitionLeader(ctx, t, p, func(ctx context.Context, cc *grpc.ClientConn) error {
		r, err := gridpb.NewIntegrityClient(cc).Mark(ctx, &gridpb.MarkRequest{Partition: uint32(p.ID), CheckId: checkID})
		if err == nil {
			pc.Index = r.Index
		}
		return err
	})
	if err != nil {
		pc.Error = "mark the check in the partition's log: " + err.Error()
		return pc
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range p.Replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := c.replicaDigest(ctx, t, id, p.ID, checkID, pc.Index)
			mu.Lock()
			pc.Replicas = append(pc.Replicas, d)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(pc.Replicas, func(i, j int) bool { return pc.Replicas[i].Node < pc.Replicas[j].Node })
	judge(pc, len(p.Replicas))
	if repair && len(pc.Agreeing) > 0 {
		for _, d := range pc.Replicas {
			if d.State != "done" || !slices.Contains(pc.Differing, d.Node) {
				continue
			}
			reason := fmt.Sprintf("digest %016x at index %d differs from the majority's", d.Digest, pc.Index)
			if d.CrcErrors > 0 {
				reason = fmt.Sprintf("%d entries fail their CRC32C at index %d", d.CrcErrors, pc.Index)
			}
			if err := c.askQuarantine(ctx, t, d.Node, p.ID, reason, checkID, pc.Index); err != nil {
				d.Error = "quarantine: " + err.Error()
				continue
			}
			pc.Quarantined = append(pc.Quarantined, d.Node)
		}
	}
	return pc
}

// judge fills in who agrees with the majority digest (held by more than
// half of the replicas, with no CRC errors) and who differs from it.
func judge(pc *gridpb.PartitionCheck, replicas int) {
	count := map[uint64]int{}
	for _, d := range pc.Replicas {
		if d.State == "done" && d.CrcErrors == 0 {
			count[d.Digest]++
		}
	}
	var major uint64
	found := false
	for dg, k := range count {
		if 2*k > replicas {
			major, found = dg, true
		}
	}
	for _, d := range pc.Replicas {
		switch {
		case d.State == "quarantined", d.State == "done" && d.CrcErrors > 0:
			pc.Differing = append(pc.Differing, d.Node)
		case d.State == "done" && found && d.Digest == major:
			pc.Agreeing = append(pc.Agreeing, d.Node)
		case d.State == "done" && found:
			pc.Differing = append(pc.Differing, d.Node)
		}
	}
	if !found && pc.Error == "" {
		pc.Error = fmt.Sprintf("no digest is held by a majority of the %d replicas", replicas)
	}
}

// replicaDigest polls one replica until its digest for the check is ready.
func (c *integrityService) replicaDigest(ctx context.Context, t *grid.Table, id string, p int, checkID, index uint64) *gridpb.ReplicaDigest {
	d := &gridpb.ReplicaDigest{Node: id, State: "unreachable"}
	nd, ok := t.Node(id)
	if !ok {
		d.Error = "not in the partition table"
		return d
	}
	deadline := time.Now().Add(digestWait)
	for {
		err := c.s.n.withPeer(ctx, nd.Addr, func(ctx context.Context, cc *grpc.ClientConn) error {
			r, err := gridpb.NewIntegrityClient(cc).Digest(ctx, &gridpb.DigestRequest{Partition: uint32(p), CheckId: checkID, Index: index})
			if err == nil {
				d = r.Digest
				d.Node = id
			}
			return err
		})
		if err != nil {
			d.State, d.Error = "unreachable", err.Error()
		}
		if (err == nil && d.State != "pending") || time.Now().After(deadline) {
			return d
		}
		select {
		case <-ctx.Done():
			return d
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *integrityService) askQuarantine(ctx context.Context, t *grid.Table, id string, p int, reason string, checkID, index uint64) error {
	nd, ok := t.Node(id)
	if !ok {
		return fmt.Errorf("%w: %s", grid.ErrUnknownNode, id)
	}
	return c.s.n.withPeer(ctx, nd.Addr, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := gridpb.NewIntegrityClient(cc).Quarantine(ctx, &gridpb.QuarantineRequest{Partition: uint32(p), Reason: reason, CheckId: checkID, Index: index})
		return err
	})
}

// withPeer runs one request to a peer over the shared connection, with a
// short timeout, converting the status back to grid errors.
func (n *Node) withPeer(ctx context.Context, addr string, f func(context.Context, *grpc.ClientConn) error) error {
	cc, err := n.conns.get(addr)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return gridpb.FromStatus(f(cctx, cc))
}

// atPartitionLeader runs call at partition p's leader, trying its replicas
// and following not-leader hints.
func (n *Node) atPartitionLeader(ctx context.Context, t *grid.Table, p grid.Partition, call func(context.Context, *grpc.ClientConn) error) error {
	var addrs []string
	for _, id := range p.Replicas {
		if nd, ok := t.Node(id); ok {
			addrs = append(addrs, nd.Addr)
		}
	}
	var lastErr error = grid.ErrNoLeader
	tried := map[string]bool{}
	for len(addrs) > 0 {
		addr := addrs[0]
		addrs = addrs[1:]
		if tried[addr] {
			continue
		}
		tried[addr] = true
		err := n.withPeer(ctx, addr, call)
		if err == nil {
			return nil
		}
		lastErr = err
		var nl *grid.NotLeaderError
		if errors.As(err, &nl) && nl.LeaderAddr != "" {
			addrs = append([]string{nl.LeaderAddr}, addrs...)
		}
	}
	return lastErr
}
