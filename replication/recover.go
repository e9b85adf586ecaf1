package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/hashicorp/raft"
)

// ReplicaState describes this node's replica of one group.
type ReplicaState struct {
	// State is "open", "quarantined" or "absent" (nothing on disk).
	State string
	// Reason says why a replica is quarantined.
	Reason string
	// Role is the Raft role of an open replica (Leader, Follower,
	// Candidate) and Leader the leader it knows ("" if none).
	Role, Leader string
	Term         uint64
	// Applied is the index the engine holds; LastIndex and LastTerm the
	// last entry of the replica's Raft log (or snapshot).
	Applied, LastIndex, LastTerm uint64
}

// Replica reports this node's replica of group id, open or not.
func (h *Host) Replica(id GroupID) (ReplicaState, error) {
	if g, ok := h.Group(id); ok {
		st := g.raft.Stats()
		leader, _ := g.Leader()
		rs := ReplicaState{State: "open", Role: g.raft.State().String(), Leader: leader, Term: g.raft.CurrentTerm(), Applied: g.Applied()}
		rs.LastIndex, _ = strconv.ParseUint(st["last_log_index"], 10, 64)
		rs.LastTerm, _ = strconv.ParseUint(st["last_log_term"], 10, 64)
		if reason, bad := g.Quarantined(); bad {
			rs.State, rs.Reason = "quarantined", reason
		}
		return rs, nil
	}
	onDisk, err := h.OnDisk()
	if err != nil {
		return ReplicaState{}, err
	}
	if !slices.Contains(onDisk, id) {
		return ReplicaState{State: "absent"}, nil
	}
	rs := ReplicaState{State: "closed"}
	if reason, bad := h.quarantineMark(id); bad {
		rs.State, rs.Reason = "quarantined", reason
	}
	if rs.Applied, err = readApplied(h.cfg.Engine, id); err != nil {
		return ReplicaState{}, err
	}
	// A closed replica's log is read as it is: a damaged last record
	// leaves LastTerm unknown (0).
	logs := h.logs.group(id, func(string) {})
	if rs.LastIndex, err = logs.LastIndex(); err != nil {
		return ReplicaState{}, fmt.Errorf("replication: %s: last log index: %w", id, err)
	}
	var last raft.Log
	if rs.LastIndex > 0 && logs.GetLog(rs.LastIndex, &last) == nil {
		rs.LastTerm = last.Term
	}
	return rs, nil
}

// RecoverGroup rewrites this node's replica of data group id into a group
// whose one voter is self, keeping the replica's state and every entry of
// its log (entries never committed elsewhere become committed), and opens
// it: it elects itself and serves. This is the unsafe last resort for a
// group that has lost its majority for good; what only the other replicas
// held is lost, and their old replicas must never rejoin with their
// data. The caller decides it is needed (the partition table names self
// as the only replica). A group already of one voter, self, is left as it
// is.
func (h *Host) RecoverGroup(ctx context.Context, id GroupID, self Member) (*Group, error) {
	if id == MetaGroup {
		return nil, fmt.Errorf("replication: the metadata group cannot be recovered this way")
	}
	self.Voter = true
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrHostClosed
	}
	if h.busy[id] {
		h.mu.Unlock()
		return nil, fmt.Errorf("%w: %s is being recovered", ErrGroupExists, id)
	}
	g, open := h.groups[id]
	if open {
		if ms, err := g.Members(); err == nil && len(ms) == 1 && ms[0].ID == self.ID && ms[0].Voter {
			h.mu.Unlock()
			return g, nil
		}
		delete(h.groups, id)
	}
	h.busy[id] = true
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.busy, id)
		h.mu.Unlock()
	}()
	if open {
		if err := g.shutdown(); err != nil {
			return nil, err
		}
	}
	if reason, bad := h.quarantineMark(id); bad {
		return nil, fmt.Errorf("%w: %s: %s", ErrQuarantined, id, reason)
	}
	h.cfg.Logger.Warn("recovering partition replica as a group of one voter", "group", id.String(), "node", self.ID)
	ng, err := h.openGroup(ctx, id, KindData, nil, &self)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errors.Join(ErrHostClosed, ng.shutdown())
	}
	h.groups[id] = ng
	h.watchLeaderless(ng)
	return ng, nil
}

// recoverFSM is the state machine raft.RecoverCluster replays into: it
// restores the snapshot only when the engine's state is incomplete, since
// otherwise the engine already holds it (and more).
type recoverFSM struct {
	*stateMachine
	restore bool
}

func (f *recoverFSM) Restore(rc io.ReadCloser) error {
	if f.restore {
		return f.stateMachine.Restore(rc)
	}
	return rc.Close()
}

// Snapshot releases what it holds once persisted: raft.RecoverCluster
// never calls Release.
func (f *recoverFSM) Snapshot() (raft.FSMSnapshot, error) {
	s, err := f.stateMachine.Snapshot()
	if err != nil {
		return nil, err
	}
	return releasingSnapshot{s}, nil
}

type releasingSnapshot struct{ raft.FSMSnapshot }

func (s releasingSnapshot) Persist(sink raft.SnapshotSink) error {
	defer s.FSMSnapshot.Release()
	return s.FSMSnapshot.Persist(sink)
}

// Release is done by Persist.
func (s releasingSnapshot) Release() {}
