package grid

import (
	"fmt"
	"slices"
	"sort"
)

// Node is what the cluster knows about one member. Capabilities grow with the
// commissioning work; the core only needs identity and address.
type Node struct {
	ID     string            `json:"id"`
	Addr   string            `json:"addr"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Partition is one row of the partition table.
type Partition struct {
	ID       int      `json:"id"`
	Replicas []string `json:"replicas"` // node ids; order is placement preference
	Leader   string   `json:"leader,omitempty"`
	// A replica move in flight (see node's reconciler): Learner is being
	// added (a non-voter catching up, then a voter) and Leaving is removed
	// once it has been; either may be empty. Replicas changes only when the
	// move completes, so clients route to Replicas throughout.
	Learner string `json:"learner,omitempty"`
	Leaving string `json:"leaving,omitempty"`
	// Repair names a replica being rebuilt after it was found corrupt: while
	// it is in Replicas it is being removed from the Raft configuration;
	// then it leaves Replicas and comes back as the Learner, fed from a
	// snapshot, and Repair clears when it is a voter again.
	Repair string `json:"repair,omitempty"`
}

// Moving reports whether a replica move (or repair) is in flight for the
// partition.
func (p Partition) Moving() bool { return p.Learner != "" || p.Leaving != "" || p.Repair != "" }

// Table is the partition table: which nodes hold which partition. Epoch grows
// with every change of replica sets, so a client can tell a stale copy.
type Table struct {
	Epoch      uint64      `json:"epoch"`
	Replicas   int         `json:"replicas"`
	Nodes      []Node      `json:"nodes"`
	Partitions []Partition `json:"partitions"`
	// Recoveries records, newest last, the partitions rebuilt from one
	// surviving replica after losing their majority (at most
	// MaxRecoveries kept): the audit trail of an unsafe operation.
	Recoveries []Recovery `json:"recoveries,omitempty"`
}

// MaxRecoveries bounds the recovery records a table keeps.
const MaxRecoveries = 32

// Recovery is the record of one partition rebuilt from one replica.
type Recovery struct {
	Partition int `json:"partition"`
	// From is the replica kept; Lost the replicas dropped.
	From string   `json:"from"`
	Lost []string `json:"lost"`
	// AtUnixMs is when the metadata leader committed it; Epoch the table
	// that did.
	AtUnixMs int64  `json:"at_unix_ms"`
	Epoch    uint64 `json:"epoch"`
	// Operator is who asked; PossiblyLost says what may be gone.
	Operator     string   `json:"operator,omitempty"`
	PossiblyLost []string `json:"possibly_lost,omitempty"`
}

// NumPartitions is the fixed partition count of the cluster.
func (t *Table) NumPartitions() int { return len(t.Partitions) }

// Node returns the node record with the given id.
func (t *Table) Node(id string) (Node, bool) {
	for _, n := range t.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return Node{}, false
}

// PartitionsOf lists the partitions that place a replica on node id.
func (t *Table) PartitionsOf(id string) []int {
	var out []int
	for _, p := range t.Partitions {
		for _, r := range p.Replicas {
			if r == id {
				out = append(out, p.ID)
				break
			}
		}
	}
	return out
}

// Hosts lists the partitions node id must host: those it is a replica of and
// those it is joining as a learner.
func (t *Table) Hosts(id string) []int {
	var out []int
	for _, p := range t.Partitions {
		if p.Learner == id || slices.Contains(p.Replicas, id) {
			out = append(out, p.ID)
		}
	}
	return out
}

// Clone returns a deep copy.
func (t *Table) Clone() *Table {
	c := &Table{Epoch: t.Epoch, Replicas: t.Replicas}
	for _, n := range t.Nodes {
		nn := n
		if n.Labels != nil {
			nn.Labels = make(map[string]string, len(n.Labels))
			for k, v := range n.Labels {
				nn.Labels[k] = v
			}
		}
		c.Nodes = append(c.Nodes, nn)
	}
	for _, p := range t.Partitions {
		c.Partitions = append(c.Partitions, Partition{ID: p.ID, Replicas: append([]string(nil), p.Replicas...), Leader: p.Leader, Learner: p.Learner, Leaving: p.Leaving, Repair: p.Repair})
	}
	for _, r := range t.Recoveries {
		r.Lost, r.PossiblyLost = slices.Clone(r.Lost), slices.Clone(r.PossiblyLost)
		c.Recoveries = append(c.Recoveries, r)
	}
	return c
}

// Validate checks the table's internal consistency.
func (t *Table) Validate() error {
	ids := make(map[string]bool, len(t.Nodes))
	for _, n := range t.Nodes {
		if n.ID == "" || n.Addr == "" {
			return fmt.Errorf("%w: node with empty id or address", ErrBadConfig)
		}
		if ids[n.ID] {
			return fmt.Errorf("%w: duplicate node id %q", ErrBadConfig, n.ID)
		}
		ids[n.ID] = true
	}
	for i, p := range t.Partitions {
		if p.ID != i {
			return fmt.Errorf("%w: partition %d listed at position %d", ErrBadConfig, p.ID, i)
		}
		seen := map[string]bool{}
		for _, r := range p.Replicas {
			if !ids[r] || seen[r] {
				return fmt.Errorf("%w: partition %d has unknown or repeated replica %q", ErrBadConfig, p.ID, r)
			}
			seen[r] = true
		}
		if p.Learner != "" && (!ids[p.Learner] || seen[p.Learner]) {
			return fmt.Errorf("%w: partition %d has unknown or existing learner %q", ErrBadConfig, p.ID, p.Learner)
		}
		if p.Leaving != "" && !seen[p.Leaving] {
			return fmt.Errorf("%w: partition %d is removing %q, which is not a replica", ErrBadConfig, p.ID, p.Leaving)
		}
		if p.Repair != "" && !seen[p.Repair] && p.Learner != p.Repair {
			return fmt.Errorf("%w: partition %d is repairing %q, which is neither a replica nor its learner", ErrBadConfig, p.ID, p.Repair)
		}
	}
	return nil
}

// SortNodes orders nodes by id, so every node computes the same thing.
func SortNodes(nodes []Node) []Node {
	out := append([]Node(nil), nodes...)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
