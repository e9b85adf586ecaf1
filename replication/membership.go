package replication

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
)

// Member is one server of a group's Raft configuration. Callers outside
// this package see groups through Member and Group's methods only;
// hashicorp/raft's types stay inside replication.
type Member struct {
	ID    string
	Addr  string
	Voter bool
}

func (m Member) server() raft.Server {
	s := raft.Server{Suffrage: raft.Nonvoter, ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.Addr)}
	if m.Voter {
		s.Suffrage = raft.Voter
	}
	return s
}

func servers(ms []Member) []raft.Server {
	out := make([]raft.Server, len(ms))
	for i, m := range ms {
		out[i] = m.server()
	}
	return out
}

// waitFuture waits for f until ctx ends: raft's own timeouts bound only
// the enqueueing of an operation, and a barrier or a configuration change
// of a leader that cannot commit (its peers stopped) would otherwise hold
// the caller — and a node's shutdown waiting on it — for good.
func waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }() // owned: raft completes every future, at the latest on shutdown
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// timeoutOf is how long a Raft operation may take under ctx.
func timeoutOf(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Millisecond)
	}
	return 10 * time.Second
}

// Members reads the group's latest configuration (committed or not).
func (g *Group) Members() ([]Member, error) {
	f := g.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	var out []Member
	for _, s := range f.Configuration().Servers {
		out = append(out, Member{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter})
	}
	return out, nil
}

// AddLearner adds a non-voting member (it catches up before it may vote).
func (g *Group) AddLearner(ctx context.Context, id, addr string) error {
	return waitFuture(ctx, g.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeoutOf(ctx)))
}

// Promote makes a member a voter (adding it if it is not a member).
func (g *Group) Promote(ctx context.Context, id, addr string) error {
	return waitFuture(ctx, g.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeoutOf(ctx)))
}

// Demote makes a voter a non-voting member.
func (g *Group) Demote(ctx context.Context, id string) error {
	return waitFuture(ctx, g.raft.DemoteVoter(raft.ServerID(id), 0, timeoutOf(ctx)))
}

// RemoveMember takes a member out of the configuration.
func (g *Group) RemoveMember(ctx context.Context, id string) error {
	return waitFuture(ctx, g.raft.RemoveServer(raft.ServerID(id), 0, timeoutOf(ctx)))
}

// TransferLeadership hands leadership to the voter id at addr, or to the
// most up-to-date voter when id is empty.
func (g *Group) TransferLeadership(id, addr string) error {
	if id == "" {
		return g.raft.LeadershipTransfer().Error()
	}
	return g.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(addr)).Error()
}

// Term is the group's current Raft term on this replica.
func (g *Group) Term() uint64 { return g.raft.CurrentTerm() }

// Barrier waits until this leader has applied every entry committed so far
// (in particular those of earlier leaders).
func (g *Group) Barrier(ctx context.Context) error {
	return waitFuture(ctx, g.raft.Barrier(timeoutOf(ctx)))
}

// ApplyLag is how many committed entries this replica has not applied yet
// (raft's counters, which both include no-op entries).
func (g *Group) ApplyLag() uint64 {
	c, a := g.raft.CommitIndex(), g.raft.AppliedIndex()
	if c > a {
		return c - a
	}
	return 0
}
