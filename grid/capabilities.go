package grid

import (
	"fmt"
	"time"
)

// Capabilities is what a node announces about itself when it joins, measured
// by itself (see node.Probe). Placement reads it to decide what a node may
// hold and which replica should lead. A zero number means "not measured".
type Capabilities struct {
	Arch     string            `json:"arch"`            // runtime.GOARCH
	GOARM    string            `json:"goarm,omitempty"` // "6", "7"; empty unless Arch is arm
	OS       string            `json:"os"`              // runtime.GOOS
	Cores    int               `json:"cores"`
	CPUScore int64             `json:"cpu_score"` // ops/ms of a short fixed integer benchmark, one core
	RAMTotal uint64            `json:"ram_total"` // bytes
	RAMFree  uint64            `json:"ram_free"`  // bytes available to new work
	DiskFree uint64            `json:"disk_free"` // bytes free to the node in its data dir
	FsyncP50 time.Duration     `json:"fsync_p50_ns"`
	FsyncP99 time.Duration     `json:"fsync_p99_ns"`
	Version  string            `json:"version"`
	Labels   map[string]string `json:"labels,omitempty"` // operator labels the node was started with
}

// Load is a node's periodic report of how busy it is.
type Load struct {
	CPU           float64   `json:"cpu"`                // percent of one core (100 = one core busy)
	RSS           uint64    `json:"rss"`                // bytes
	DiskUsed      uint64    `json:"disk_used"`          // bytes in the data dir
	Replicas      int       `json:"replicas"`           // partition replicas hosted
	Leaders       int       `json:"leaders"`            // of which this node leads
	MaxAppliedLag uint64    `json:"max_applied_lag"`    // worst applied-index lag behind a leader, in entries
	DiskLow       bool      `json:"disk_low,omitempty"` // data disk under the node's reserve: it refuses growing writes
	ReportedAt    time.Time `json:"reported_at"`
}

// NodeState is where a node is in its life in the cluster.
//
//	joining → active ⇄ draining → removed
//	active → suspect → dead (or back to active) → removed
type NodeState string

// The node states. Only active nodes receive new replicas; draining, dead and
// removed nodes lose the ones they have; a suspect node keeps its replicas
// (it may only be slow) but gets no new ones.
const (
	StateJoining  NodeState = "joining"
	StateActive   NodeState = "active"
	StateDraining NodeState = "draining"
	StateSuspect  NodeState = "suspect"
	StateDead     NodeState = "dead"
	StateRemoved  NodeState = "removed"
)

// Valid reports whether s is one of the known states.
func (s NodeState) Valid() bool {
	switch s {
	case StateJoining, StateActive, StateDraining, StateSuspect, StateDead, StateRemoved:
		return true
	}
	return false
}

// NodeRecord is everything the metadata group keeps about one node.
type NodeRecord struct {
	Node
	Caps  Capabilities `json:"caps"`
	State NodeState    `json:"state"`
	Load  Load         `json:"load"`
}

// Label returns the node's value for an operator label. The record's own
// labels (as the operator last set them) win over the ones the node announced.
func (r NodeRecord) Label(key string) (string, bool) {
	if v, ok := r.Labels[key]; ok {
		return v, true
	}
	v, ok := r.Caps.Labels[key]
	return v, ok
}

// Validate checks one record on its own: identity, address and state.
func (r NodeRecord) Validate() error {
	switch {
	case r.ID == "":
		return fmt.Errorf("%w: node record with an empty id", ErrBadConfig)
	case r.Addr == "":
		return fmt.Errorf("%w: node %q has an empty address", ErrBadConfig, r.ID)
	case !r.State.Valid():
		return fmt.Errorf("%w: node %q has unknown state %q", ErrBadConfig, r.ID, r.State)
	}
	return nil
}

// Requirements are what a job asks of the nodes that run its tasks. The
// zero value accepts every node.
type Requirements struct {
	Labels      map[string]string `json:"labels,omitempty"` // operator labels with these values
	Arch        []string          `json:"arch,omitempty"`   // GOARCH values ("arm", or "armv6"/"armv7" for a GOARM); empty: any
	MinRAM      uint64            `json:"min_ram,omitempty"`
	MinCPUScore int64             `json:"min_cpu_score,omitempty"`
}

// Empty reports whether r accepts every node.
func (r Requirements) Empty() bool {
	return len(r.Labels) == 0 && len(r.Arch) == 0 && r.MinRAM == 0 && r.MinCPUScore == 0
}

// Check says why rec does not meet r, or nil if it does.
func (r Requirements) Check(rec NodeRecord) error {
	for k, v := range r.Labels {
		if got, ok := rec.Label(k); !ok || got != v {
			return fmt.Errorf("label %s=%q, want %q", k, got, v)
		}
	}
	if len(r.Arch) > 0 {
		arch := rec.Caps.Arch
		ok := false
		for _, a := range r.Arch {
			if a == arch || (rec.Caps.GOARM != "" && a == arch+"v"+rec.Caps.GOARM) {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("arch %s, want one of %v", arch, r.Arch)
		}
	}
	if r.MinRAM > 0 && rec.Caps.RAMTotal < r.MinRAM {
		return fmt.Errorf("RAM %s, want at least %s", sizeString(rec.Caps.RAMTotal), sizeString(r.MinRAM))
	}
	if r.MinCPUScore > 0 && rec.Caps.CPUScore < r.MinCPUScore {
		return fmt.Errorf("CPU score %d, want at least %d", rec.Caps.CPUScore, r.MinCPUScore)
	}
	return nil
}
