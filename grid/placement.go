package grid

import (
	"fmt"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
)

// PlacementPolicy tunes the ring. Load is the bounded-load factor: no node
// owns more than Load × the average number of partitions as primary.
type PlacementPolicy struct {
	Replicas     int
	VirtualNodes int // consistent's "ReplicationFactor": points per member on the ring
	Load         float64
}

// DefaultPlacementPolicy places 3 replicas with a 1.25 load bound.
func DefaultPlacementPolicy() PlacementPolicy {
	return PlacementPolicy{Replicas: 3, VirtualNodes: 64, Load: 1.25}
}

type ringMember string

func (m ringMember) String() string { return string(m) }

type ringHasher struct{}

func (ringHasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

// Place computes a fresh table for the given nodes: partition p's replicas are
// its ring owner followed by the next distinct members on the ring. It is a
// pure function: the same input gives the same table on every node.
func Place(nodes []Node, partitions int, policy PlacementPolicy) (*Table, error) {
	if partitions <= 0 {
		return nil, fmt.Errorf("%w: partition count %d must be positive", ErrBadConfig, partitions)
	}
	if policy.Replicas <= 0 {
		return nil, fmt.Errorf("%w: replica count %d must be positive", ErrBadConfig, policy.Replicas)
	}
	if len(nodes) < policy.Replicas {
		return nil, fmt.Errorf("%w: %d nodes, %d replicas", ErrTooManyNodes, len(nodes), policy.Replicas)
	}
	sorted := SortNodes(nodes)
	members := make([]consistent.Member, 0, len(sorted))
	for _, n := range sorted {
		members = append(members, ringMember(n.ID))
	}
	vn := policy.VirtualNodes
	if vn <= 0 {
		vn = 64
	}
	load := policy.Load
	if load < 1 {
		load = 1.25
	}
	ring := consistent.New(members, consistent.Config{
		PartitionCount:    partitions,
		ReplicationFactor: vn,
		Load:              load,
		Hasher:            ringHasher{},
	})
	t := &Table{Epoch: 1, Replicas: policy.Replicas, Nodes: sorted}
	for p := 0; p < partitions; p++ {
		owner := ring.GetPartitionOwner(p).String()
		replicas := []string{owner}
		if policy.Replicas > 1 {
			closest, err := ring.GetClosestNForPartition(p, len(members))
			if err != nil {
				return nil, fmt.Errorf("grid: ring lookup for partition %d: %w", p, err)
			}
			for _, m := range closest {
				if len(replicas) == policy.Replicas {
					break
				}
				if id := m.String(); id != owner {
					replicas = append(replicas, id)
				}
			}
		}
		t.Partitions = append(t.Partitions, Partition{ID: p, Replicas: replicas})
	}
	return t, nil
}
