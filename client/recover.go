package client

import (
	"context"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// RecoverReport is the outcome of RecoverPartition.
type RecoverReport struct {
	Partition int
	// From is the replica the partition was (or would be) rebuilt from.
	From string
	// Replicas are every replica as the recovery found it.
	Replicas []ReplicaState
	// PossiblyLost says, in words, what the recovery may have lost.
	PossiblyLost []string
	// Epoch is the partition table that records the recovery (0 on a dry
	// run).
	Epoch  uint64
	DryRun bool
}

// ReplicaState is one node's replica of a partition.
type ReplicaState struct {
	Node string
	// State is open, quarantined, closed, absent or unreachable.
	State, Reason string
	// Role is the Raft role of an open replica; Leader the leader it knows.
	Role, Leader        string
	Term, Applied       uint64
	LastIndex, LastTerm uint64
}

// RecoverOption adjusts RecoverPartition.
type RecoverOption func(*gridpb.RecoverRequest)

// RecoverFrom names the replica to recover from (default: the healthy
// replica whose log reaches furthest).
func RecoverFrom(node string) RecoverOption {
	return func(r *gridpb.RecoverRequest) { r.From = node }
}

// RecoverDryRun only reports what a recovery would do.
func RecoverDryRun() RecoverOption { return func(r *gridpb.RecoverRequest) { r.DryRun = true } }

// ForgetUnreachable recovers even though some replicas cannot be asked
// for their state; their nodes must never rejoin with their old data.
func ForgetUnreachable() RecoverOption {
	return func(r *gridpb.RecoverRequest) { r.ForgetUnreachable = true }
}

// RecoverOperator names who asked, for the audit record.
func RecoverOperator(name string) RecoverOption {
	return func(r *gridpb.RecoverRequest) { r.Operator = name }
}

// RecoverPartition rebuilds a partition that has lost its majority (its
// other replicas quarantined or gone) from its best surviving replica, as
// etcd's --force-new-cluster does for a whole cluster: that replica becomes
// the partition's only voter, and the cluster then re-creates the others
// from it. Unsafe: writes that only the lost replicas held are gone (the
// report says what may be). It is refused while the partition has a leader
// or a healthy majority, and recorded in the partition table
// (grid.Table.Recoveries).
func (c *Client) RecoverPartition(ctx context.Context, partition int, opts ...RecoverOption) (RecoverReport, error) {
	req := &gridpb.RecoverRequest{Partition: uint32(partition)}
	for _, o := range opts {
		o(req)
	}
	var rep RecoverReport
	err := c.run(ctx, "recover partition", c.anyNode().stream(), true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewClusterClient(cc).Recover(ctx, req, opts...)
		if err != nil {
			return err
		}
		rep = RecoverReport{Partition: partition, From: r.GetFrom(), PossiblyLost: r.GetPossiblyLost(), Epoch: r.GetEpoch(), DryRun: r.GetDryRun()}
		for _, s := range r.GetReplicas() {
			rep.Replicas = append(rep.Replicas, ReplicaState{Node: s.GetNode(), State: s.GetState(), Reason: s.GetReason(), Role: s.GetRole(),
				Leader: s.GetLeader(), Term: s.GetTerm(), Applied: s.GetApplied(), LastIndex: s.GetLastIndex(), LastTerm: s.GetLastTerm()})
		}
		return nil
	})
	return rep, err
}
