package test

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// nodeSet is a cluster whose nodes a test can reach: local processes
// (localcluster) or containers.
type nodeSet interface {
	IDs() []string
	Running(id string) bool
	Addr(id string) string
}

var _ nodeSet = (*localcluster.Cluster)(nil)

// replicasEqual returns nil when, for every partition, all replicas report
// the same applied index and hold byte-identical entries of the given maps.
func replicasEqual(ctx context.Context, lc nodeSet, partitions int, maps []string) error {
	type replica struct {
		id      string
		kv      gridpb.KVClient
		applied uint64
	}
	byPart := map[int32][]replica{}
	epochs := map[string]uint64{}
	for _, id := range lc.IDs() {
		if !lc.Running(id) {
			continue
		}
		conn, err := grpc.NewClient(lc.Addr(id), clientCreds)
		if err != nil {
			return err
		}
		defer conn.Close()
		st, err := gridpb.NewAdminClient(conn).Status(ctx, &gridpb.StatusRequest{})
		if err != nil {
			return fmt.Errorf("status of %s: %w", id, err)
		}
		epochs[id] = st.TableEpoch
		for _, g := range st.Groups {
			if g.Partition >= 0 {
				byPart[g.Partition] = append(byPart[g.Partition], replica{id: id, kv: gridpb.NewKVClient(conn), applied: g.AppliedIndex})
			}
		}
	}
	for p := int32(0); p < int32(partitions); p++ {
		reps := byPart[p]
		if len(reps) != 3 {
			var on []string
			for _, r := range reps {
				on = append(on, r.id)
			}
			return fmt.Errorf("partition %d has %d live replicas (on %v; table epochs by node %v)", p, len(reps), on, epochs)
		}
		for _, r := range reps[1:] {
			if r.applied != reps[0].applied {
				return fmt.Errorf("partition %d: %s applied %d, %s applied %d", p, reps[0].id, reps[0].applied, r.id, r.applied)
			}
		}
		for _, m := range maps {
			var first []*gridpb.Entry
			for i, r := range reps {
				entries, applied, err := scanReplica(ctx, r.kv, m, uint32(p))
				if err != nil {
					return fmt.Errorf("scan %s partition %d on %s: %w", m, p, r.id, err)
				}
				if applied != r.applied {
					return fmt.Errorf("partition %d on %s moved during the check", p, r.id)
				}
				if i == 0 {
					first = entries
					continue
				}
				if err := sameEntries(first, entries); err != nil {
					return fmt.Errorf("map %s partition %d: %s and %s differ: %w", m, p, reps[0].id, r.id, err)
				}
			}
		}
	}
	return nil
}

// scanReplica reads one partition of a map from one replica's local state.
func scanReplica(ctx context.Context, kv gridpb.KVClient, m string, p uint32) ([]*gridpb.Entry, uint64, error) {
	var out []*gridpb.Entry
	var after []byte
	var applied uint64
	for {
		stream, err := kv.Scan(ctx, &gridpb.ScanRequest{Map: m, Partition: p, StartAfter: after, Consistency: gridpb.Consistency_STALE})
		if err != nil {
			return nil, 0, err
		}
		more := false
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, 0, err
			}
			out = append(out, resp.Entries...)
			more, applied = resp.More, resp.AppliedIndex
		}
		if !more {
			return out, applied, nil
		}
		after = out[len(out)-1].Key
	}
}

func sameEntries(a, b []*gridpb.Entry) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d entries vs %d", len(a), len(b))
	}
	for i := range a {
		if !bytes.Equal(a[i].Key, b[i].Key) || !bytes.Equal(a[i].Value, b[i].Value) || a[i].Version != b[i].Version {
			return fmt.Errorf("entry %d: %q@%d vs %q@%d", i, a[i].Key, a[i].Version, b[i].Key, b[i].Version)
		}
	}
	return nil
}
