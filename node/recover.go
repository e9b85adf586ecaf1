package node

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// recoverWait bounds one replica's rewrite into a group of one: it applies
// whatever its log holds past its engine, then writes a snapshot.
const recoverWait = 5 * time.Minute

// Replica reports this node's replica of a partition.
func (c *integrityService) Replica(_ context.Context, req *gridpb.ReplicaRequest) (*gridpb.ReplicaResponse, error) {
	rs, err := c.s.n.replicaState(replication.GroupID(req.Partition))
	if err != nil {
		return nil, err
	}
	return &gridpb.ReplicaResponse{Replica: rs}, nil
}

func (n *Node) replicaState(g replication.GroupID) (*gridpb.ReplicaState, error) {
	if g == replication.MetaGroup {
		return nil, fmt.Errorf("%w: not a data partition", grid.ErrBadPartition)
	}
	rs, err := n.host.Replica(g)
	if err != nil {
		return nil, err
	}
	return &gridpb.ReplicaState{Node: n.cfg.ID, State: rs.State, Reason: rs.Reason, Role: rs.Role, Leader: rs.Leader,
		Term: rs.Term, Applied: rs.Applied, LastIndex: rs.LastIndex, LastTerm: rs.LastTerm}, nil
}

// RecoverReplica rewrites this node's replica into a group of one voter,
// once the committed partition table names this node as the partition's
// only replica: the table, which the metadata leader changes only through
// Cluster.Recover, is what makes the unsafe step legitimate.
func (c *integrityService) RecoverReplica(ctx context.Context, req *gridpb.RecoverReplicaRequest) (*gridpb.RecoverReplicaResponse, error) {
	n := c.s.n
	// The table that asks for the recovery may not have reached this
	// node's copy of the metadata yet.
	t := n.meta.Meta().SharedTable()
	for t == nil || t.Epoch < req.Epoch {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for partition table epoch %d: %w", grid.ErrRefused, req.Epoch, ctx.Err())
		case <-n.meta.Meta().TableChanged():
		case <-time.After(100 * time.Millisecond):
		}
		t = n.meta.Meta().SharedTable()
	}
	if int(req.Partition) >= len(t.Partitions) {
		return nil, fmt.Errorf("%w: %d", grid.ErrBadPartition, req.Partition)
	}
	p := t.Partitions[req.Partition]
	// A move the reconciler started since (a learner being added) is no
	// reason to refuse: it waits for the leader this recovery makes.
	if !slices.Equal(p.Replicas, []string{n.cfg.ID}) {
		return nil, fmt.Errorf("%w: the partition table (epoch %d) does not name %s as partition %d's only replica (replicas %v)",
			grid.ErrRefused, t.Epoch, n.cfg.ID, p.ID, p.Replicas)
	}
	id := replication.GroupID(req.Partition)
	if _, err := n.host.RecoverGroup(ctx, id, replication.Member{ID: n.cfg.ID, Addr: n.addr}); err != nil {
		return nil, err
	}
	n.log.Warn("partition recovered as a group of one replica; the cluster re-creates the others", "partition", p.ID, "epoch", t.Epoch)
	rs, err := n.replicaState(id)
	if err != nil {
		return nil, err
	}
	return &gridpb.RecoverReplicaResponse{Replica: rs}, nil
}

// Recover rebuilds a partition that lost its majority (at the metadata
// leader).
func (c *clusterService) Recover(ctx context.Context, req *gridpb.RecoverRequest) (*gridpb.RecoverResponse, error) {
	var resp *gridpb.RecoverResponse
	err := c.atMetaLeader(ctx, func() (err error) {
		resp, err = c.s.n.mgr.recoverPartition(ctx, req)
		return err
	}, func(ctx context.Context, cc gridpb.ClusterClient) (err error) {
		resp, err = cc.Recover(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// replicaStates asks every replica of p for its state, at once.
func (n *Node) replicaStates(ctx context.Context, t *grid.Table, p grid.Partition) []*gridpb.ReplicaState {
	ids := slices.Clone(p.Replicas)
	if p.Learner != "" && !slices.Contains(ids, p.Learner) {
		ids = append(ids, p.Learner)
	}
	out := make([]*gridpb.ReplicaState, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = &gridpb.ReplicaState{Node: id, State: "unreachable"}
			if id == n.cfg.ID {
				rs, err := n.replicaState(replication.GroupID(p.ID))
				if err != nil {
					out[i].Reason = err.Error()
					return
				}
				out[i] = rs
				return
			}
			nd, ok := t.Node(id)
			if !ok {
				out[i].Reason = "not in the partition table"
				return
			}
			err := n.withPeer(ctx, nd.Addr, func(ctx context.Context, cc *grpc.ClientConn) error {
				// A connection that broke when the peer restarted may be
				// between redials: wait for it (withPeer bounds the wait)
				// rather than call a live replica unreachable.
				r, err := gridpb.NewIntegrityClient(cc).Replica(ctx, &gridpb.ReplicaRequest{Partition: uint32(p.ID)}, grpc.WaitForReady(true))
				if err == nil {
					out[i] = r.Replica
					out[i].Node = id
				}
				return err
			})
			if err != nil {
				out[i].Reason = err.Error()
			}
		}()
	}
	wg.Wait()
	return out
}

// recoverPartition is Cluster.Recover at the metadata leader (holding the
// manager's lock throughout, so that the reconciler starts no move before
// the survivor has been rewritten): it finds the
// partition's replicas, refuses unless the partition has lost its majority
// (or a recovery of it is half done), picks the replica whose log reaches
// furthest, commits a table naming it the only replica (with an audit
// record), and has that replica rewrite its group. The reconciler then
// re-creates the other replicas from it, as for any under-replicated
// partition, and their old nodes drop what they held.
func (m *manager) recoverPartition(ctx context.Context, req *gridpb.RecoverRequest) (*gridpb.RecoverResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.n.meta.Meta().SharedTable()
	if t == nil {
		return nil, fmt.Errorf("%w: the cluster has no partition table yet", grid.ErrRefused)
	}
	if int(req.Partition) >= len(t.Partitions) {
		return nil, fmt.Errorf("%w: %d (cluster has %d)", grid.ErrBadPartition, req.Partition, len(t.Partitions))
	}
	p := t.Partitions[req.Partition]
	states := m.n.replicaStates(ctx, t, p)
	resp := &gridpb.RecoverResponse{Replicas: states, DryRun: req.DryRun}
	from, err := chooseRecovery(p, states, req)
	if err != nil {
		return nil, err
	}
	resp.From = from.Node
	resp.PossiblyLost = possiblyLost(from, states)
	if req.DryRun {
		return resp, nil
	}
	if !slices.Equal(p.Replicas, []string{from.Node}) || p.Moving() {
		next := t.Clone()
		np := &next.Partitions[p.ID]
		lost := slices.DeleteFunc(slices.Clone(p.Replicas), func(id string) bool { return id == from.Node })
		np.Replicas, np.Leader, np.Learner, np.Leaving, np.Repair = []string{from.Node}, from.Node, "", "", ""
		next.Recoveries = append(next.Recoveries, grid.Recovery{Partition: p.ID, From: from.Node, Lost: lost,
			AtUnixMs: time.Now().UnixMilli(), Epoch: t.Epoch + 1, Operator: req.Operator, PossiblyLost: resp.PossiblyLost})
		if extra := len(next.Recoveries) - grid.MaxRecoveries; extra > 0 {
			next.Recoveries = slices.Delete(next.Recoveries, 0, extra)
		}
		if err := m.putTable(ctx, next); err != nil {
			return nil, fmt.Errorf("commit the recovery of partition %d: %w", p.ID, err)
		}
		m.n.log.Warn("AUDIT partition recovery committed: the partition is rebuilt from one replica",
			"partition", p.ID, "from", from.Node, "dropped", lost, "operator", req.Operator,
			"possibly_lost", strings.Join(resp.PossiblyLost, "; "))
	}
	t = m.n.meta.Meta().SharedTable()
	resp.Epoch = t.Epoch
	nd, ok := t.Node(from.Node)
	if !ok {
		return nil, fmt.Errorf("%w: %s", grid.ErrUnknownNode, from.Node)
	}
	cc, err := m.n.conns.get(nd.Addr)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, recoverWait)
	defer cancel()
	r, err := gridpb.NewIntegrityClient(cc).RecoverReplica(rctx, &gridpb.RecoverReplicaRequest{Partition: uint32(p.ID), Epoch: t.Epoch})
	if err != nil {
		return nil, fmt.Errorf("the table now names %s as partition %d's only replica, but its replica was not rewritten (run the recovery again): %w",
			from.Node, p.ID, gridpb.FromStatus(err))
	}
	for i, s := range resp.Replicas {
		if s.Node == from.Node {
			resp.Replicas[i] = r.Replica
		}
	}
	return resp, nil
}

// chooseRecovery picks the replica to recover partition p from, or says
// why the partition must not be recovered.
func chooseRecovery(p grid.Partition, states []*gridpb.ReplicaState, req *gridpb.RecoverRequest) (*gridpb.ReplicaState, error) {
	var healthy, unreachable []string
	var cands []*gridpb.ReplicaState
	for _, s := range states {
		switch {
		case s.State == "unreachable":
			who := s.Node
			if s.Reason != "" {
				who += " (" + s.Reason + ")"
			}
			unreachable = append(unreachable, who)
		case s.State == "open" && s.Role == "Leader":
			return nil, fmt.Errorf("%w: partition %d has a leader (%s): nothing to recover", grid.ErrRefused, p.ID, s.Node)
		case s.State == "open" && s.Leader != "":
			return nil, fmt.Errorf("%w: partition %d's replica on %s follows leader %s; if that leader is gone, retry after an election timeout",
				grid.ErrRefused, p.ID, s.Node, s.Leader)
		case s.State == "open":
			if slices.Contains(p.Replicas, s.Node) {
				healthy = append(healthy, s.Node)
			}
			cands = append(cands, s)
		}
	}
	// A half-done recovery (the table already names one replica) is
	// finished whatever the others are.
	resumed := len(p.Replicas) == 1 && len(cands) == 1 && cands[0].Node == p.Replicas[0]
	if !resumed && 2*len(healthy) > len(p.Replicas) {
		return nil, fmt.Errorf("%w: partition %d has a healthy majority (%s of %d replicas): it elects a leader by itself",
			grid.ErrRefused, p.ID, strings.Join(healthy, ", "), len(p.Replicas))
	}
	if !resumed && len(unreachable) > 0 && !req.ForgetUnreachable {
		return nil, fmt.Errorf("%w: partition %d's replicas on %s are unreachable: bring them back (they may hold the partition's newest writes), "+
			"or recover without them (--forget-unreachable) and never restart them with their old data", grid.ErrRefused, p.ID, strings.Join(unreachable, ", "))
	}
	if req.From != "" {
		i := slices.IndexFunc(cands, func(s *gridpb.ReplicaState) bool { return s.Node == req.From })
		if i < 0 {
			return nil, fmt.Errorf("%w: %s has no healthy open replica of partition %d to recover from", grid.ErrRefused, req.From, p.ID)
		}
		return cands[i], nil
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("%w: no healthy replica of partition %d survives (%s); restore its maps from a backup",
			grid.ErrRefused, p.ID, describeStates(states))
	}
	return slices.MaxFunc(cands, func(a, b *gridpb.ReplicaState) int {
		return cmp.Or(cmp.Compare(a.LastTerm, b.LastTerm), cmp.Compare(a.LastIndex, b.LastIndex), cmp.Compare(a.Applied, b.Applied),
			strings.Compare(b.Node, a.Node))
	}), nil
}

// possiblyLost says, replica by replica, what a recovery from from may
// lose: log entries the others hold past from's log, or anything an
// unreachable replica alone held.
func possiblyLost(from *gridpb.ReplicaState, states []*gridpb.ReplicaState) []string {
	var out []string
	for _, s := range states {
		switch {
		case s.Node == from.Node:
		case s.State == "unreachable":
			out = append(out, fmt.Sprintf("%s was unreachable: writes only it held are lost", s.Node))
		case s.LastTerm > from.LastTerm || (s.LastTerm == from.LastTerm && s.LastIndex > from.LastIndex):
			out = append(out, fmt.Sprintf("%s (%s) has log entries up to index %d (term %d), past %s's %d (term %d): writes acknowledged in between may be lost",
				s.Node, s.State, s.LastIndex, s.LastTerm, from.Node, from.LastIndex, from.LastTerm))
		}
	}
	return out
}

func describeStates(states []*gridpb.ReplicaState) string {
	var parts []string
	for _, s := range states {
		parts = append(parts, s.Node+" "+s.State)
	}
	return strings.Join(parts, ", ")
}
