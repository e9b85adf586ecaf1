package client

import (
	"context"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// CheckReport is the outcome of Check: one line per partition.
type CheckReport struct {
	Partitions []PartitionCheck
}

// Clean reports whether every partition was checked and every replica
// agreed with its majority.
func (r CheckReport) Clean() bool {
	for _, p := range r.Partitions {
		if p.Error != "" || len(p.Differing) > 0 {
			return false
		}
	}
	return true
}

// PartitionCheck compares one partition's replicas at one applied index.
type PartitionCheck struct {
	Partition int
	Index     uint64   // the applied index every digest was taken at
	Agreeing  []string // replicas holding the majority's digest
	// Differing replicas differ from the majority, hold entries failing
	// their CRC32C, or are quarantined already.
	Differing []string
	// Quarantined lists the replicas this check quarantined; the cluster
	// rebuilds them from the leader's snapshot.
	Quarantined []string
	Replicas    []ReplicaDigest
	Error       string // why the partition could not be checked
}

// ReplicaDigest is one replica's digest of its partition.
type ReplicaDigest struct {
	Node      string
	State     string // done, pending, quarantined, missed, unreachable
	Digest    uint64
	Entries   uint64
	CRCErrors uint64
	Error     string
}

// CheckOption adjusts Check.
type CheckOption func(*gridpb.CheckRequest)

// CheckPartitions restricts a check to the given partitions.
func CheckPartitions(parts ...int) CheckOption {
	return func(r *gridpb.CheckRequest) {
		for _, p := range parts {
			r.Partitions = append(r.Partitions, uint32(p))
		}
	}
}

// NoRepair makes Check only report: replicas that differ are not
// quarantined.
func NoRepair() CheckOption { return func(r *gridpb.CheckRequest) { r.NoRepair = true } }

// Check compares, for every partition, a digest of its state across its
// replicas at one applied index (a marker committed through the
// partition's Raft log). Replicas differing from their majority are
// quarantined and rebuilt unless NoRepair is given.
func (c *Client) Check(ctx context.Context, opts ...CheckOption) (CheckReport, error) {
	req := &gridpb.CheckRequest{}
	for _, o := range opts {
		o(req)
	}
	var rep CheckReport
	err := c.run(ctx, "check", c.anyNode().stream(), false, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewIntegrityClient(cc).Check(ctx, req, opts...)
		if err != nil {
			return err
		}
		rep = CheckReport{}
		for _, p := range r.GetPartitions() {
			pc := PartitionCheck{
				Partition: int(p.GetPartition()), Index: p.GetIndex(), Agreeing: p.GetAgreeing(), Differing: p.GetDiffering(),
				Quarantined: p.GetQuarantined(), Error: p.GetError(),
			}
			for _, d := range p.GetReplicas() {
				pc.Replicas = append(pc.Replicas, ReplicaDigest{
					Node: d.GetNode(), State: d.GetState(), Digest: d.GetDigest(), Entries: d.GetEntries(), CRCErrors: d.GetCrcErrors(), Error: d.GetError(),
				})
			}
			rep.Partitions = append(rep.Partitions, pc)
		}
		return nil
	})
	return rep, err
}
