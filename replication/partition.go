package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Group is one Raft group on this host: a data partition or the metadata
// group. Its methods are safe for concurrent use.
type Group struct {
	// bootstrapped: this process created the group's first configuration
	// (a new cluster), so no leader can exist yet (campaignIfLeaderless).
	bootstrapped bool
	id           GroupID
	kind         GroupKind
	raft         *raft.Raft
	sm           *stateMachine
	meta         *MetaState
	logs         logStore
	trans        raft.Transport
	timing       RaftTiming
	opened       time.Time // when this host opened the group
	reads        *readGate
	corrupt      *corruption
	clock        func() time.Time
	// suspected is set while the group waits for a new leader after its
	// leader's node was suspected (see Host.SuspectPeer).
	suspected atomic.Bool
	// glog is logs as the shared store's view (nil with another store);
	// ret is the retention check's state (retention.go).
	glog *groupLog
	ret  retention
}

// logStore is the group's Raft log (its part of the node's shared store),
// which the scrub reads too.
type logStore interface {
	raft.LogStore
	Close() error
}

// ID is the group id.
func (g *Group) ID() GroupID { return g.id }

// Meta is the metadata state (nil for data groups).
func (g *Group) Meta() *MetaState { return g.meta }

// Applied is the index of the last entry the state machine holds. It may
// trail the commit index by no-op and barrier entries, which raft never
// hands to the state machine; raft's own AppliedIndex is no substitute: it
// moves when entries are dispatched to the state machine, before they are
// applied. A replica has every acknowledged write once its Applied reaches
// the leader's (the leader applies before it acknowledges).
func (g *Group) Applied() uint64 { return g.sm.Applied() }

// CutOff reports whether this replica has heard from no leader for
// RaftTiming.CutOffAfter (and does not lead itself): its state may be behind
// the partition's, with nothing to tell it so.
func (g *Group) CutOff() bool {
	if g.raft.State() == raft.Leader {
		return false
	}
	last := g.raft.LastContact()
	if last.IsZero() {
		last = g.opened // a replica just started has not been cut off yet
	}
	return time.Since(last) > g.timing.CutOffAfter
}

// IsLeader reports whether this replica currently believes it leads.
func (g *Group) IsLeader() bool { return g.raft.State() == raft.Leader }

// Leader returns the known leader's id and address (empty if unknown).
func (g *Group) Leader() (id, addr string) {
	a, i := g.raft.LeaderWithID()
	return string(i), string(a)
}

// notLeader builds the error a client follows to the leader.
func (g *Group) notLeader() error {
	id, addr := g.Leader()
	return &grid.NotLeaderError{Partition: int(g.id), LeaderID: id, LeaderAddr: addr}
}

// Propose replicates a command and returns its result once applied here. An
// error matching grid.ErrAmbiguous means the command may or may not commit.
func (g *Group) Propose(ctx context.Context, cmd proto.Message) (*gridpb.Result, error) {
	if g.raft.State() != raft.Leader {
		return nil, g.notLeader()
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", grid.ErrBadRequest, err)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, context.DeadlineExceeded
		}
	}
	f := g.raft.Apply(data, timeout)
	ferr := waitFuture(ctx, f)
	if ctx.Err() != nil && ferr == ctx.Err() {
		return nil, fmt.Errorf("%w: %s: %w", grid.ErrAmbiguous, g.id, ctx.Err())
	}
	switch {
	case ferr == nil:
	case errors.Is(ferr, raft.ErrNotLeader):
		return nil, g.notLeader() // refused before it entered the log
	case errors.Is(ferr, raft.ErrEnqueueTimeout):
		return nil, fmt.Errorf("%w: %s: proposal queue timed out", grid.ErrNoLeader, g.id)
	case errors.Is(ferr, raft.ErrLeadershipLost), errors.Is(ferr, raft.ErrRaftShutdown),
		errors.Is(ferr, raft.ErrLeadershipTransferInProgress):
		return nil, fmt.Errorf("%w: %s: %w", grid.ErrAmbiguous, g.id, ferr)
	default:
		return nil, fmt.Errorf("%w: %s: %w", grid.ErrAmbiguous, g.id, ferr)
	}
	ar, ok := f.Response().(applyResult)
	if !ok {
		return nil, fmt.Errorf("replication: %s: unexpected apply response %T", g.id, f.Response())
	}
	if ar.err != nil {
		return nil, ar.err
	}
	return ar.res, nil
}

// ReadView opens a view of the group's state. Linearizable reads require the
// leader: after its first barrier in the term, the view is opened and then
// leadership is confirmed (one confirmation covers every read waiting for
// it). Stale reads use the local state as is. The caller closes the view.
func (g *Group) ReadView(ctx context.Context, linearizable bool) (View, uint64, error) {
	if err := g.corrupt.err(g.id); err != nil {
		return nil, 0, err
	}
	if linearizable {
		if err := g.reads.ensureBarrier(ctx); err != nil {
			return nil, 0, err
		}
	}
	applied := g.sm.Applied() // read before the view, which holds at least this
	v, err := g.sm.eng.NewView()
	if err != nil {
		return nil, 0, fmt.Errorf("replication: %s: open view: %w", g.id, err)
	}
	if linearizable {
		if err := g.reads.verify(ctx); err != nil {
			v.Close()
			return nil, 0, err
		}
	}
	return v, applied, nil
}

// now is the time reads compare expiries with: this node's clock, which on
// the leader of a linearizable read is the leader's clock. (A key's expiry
// was fixed by the clock of the leader that wrote it; clocks of replicas
// should agree to well within the TTLs in use.)
func (g *Group) now() int64 { return g.clock().UnixNano() }

// Get reads one entry of a map through a view (see ReadView). An expired
// entry is not found. A linearizable read decides expiry in the log's
// order, as writes do (see expireInLog).
func (g *Group) Get(ctx context.Context, mapName string, key []byte, linearizable bool) (StoredEntry, uint64, error) {
	for range maxExpireRounds {
		e, applied, due, err := g.get(ctx, mapName, key, linearizable)
		if due == nil || err != nil {
			return e, applied, err
		}
		if err := g.expireInLog(ctx, due); err != nil {
			return StoredEntry{}, 0, err
		}
	}
	return StoredEntry{}, 0, g.unsettled()
}

// maxExpireRounds bounds the expire-then-read rounds of one read: a round
// ends a key unless this node's clock stepped back between the read and
// the proposal.
const maxExpireRounds = 8

func (g *Group) unsettled() error {
	return fmt.Errorf("%w: %s: expiry of the keys read did not settle (clock stepping back?)", grid.ErrNoLeader, g.id)
}

// expireInLog makes the expiry of keys a linearizable read found due (by
// this leader's clock, but still stored) a step of the log: a command
// stamped now deletes each one that still has the version read, and the
// caller reads again after it applied. A write stamped before the expiry
// but not applied yet when the key was read would otherwise find the key
// live after a read had reported it gone; now either that write comes
// first in the log (and the read sees its result) or the key is gone for
// it too.
func (g *Group) expireInLog(ctx context.Context, due []*gridpb.ExpiredKey) error {
	cmd := &gridpb.Command{LeaderTime: g.now(), Op: &gridpb.Command_Expire{Expire: &gridpb.ExpireOp{Keys: due}}}
	if _, err := g.Propose(ctx, cmd); err != nil {
		return fmt.Errorf("replication: %s: expire %d keys a read found due: %w", g.id, len(due), err)
	}
	return nil
}

// get is one attempt of Get; due lists the key if a linearizable read
// found it expired but still stored.
func (g *Group) get(ctx context.Context, mapName string, key []byte, linearizable bool) (StoredEntry, uint64, []*gridpb.ExpiredKey, error) {
	v, applied, err := g.ReadView(ctx, linearizable)
	if err != nil {
		return StoredEntry{}, 0, nil, err
	}
	defer v.Close()
	raw, err := v.Get(dataKey(g.id, mapName, key))
	if errors.Is(err, ErrEngineNotFound) {
		return StoredEntry{}, applied, nil, grid.ErrNotFound
	}
	if err != nil {
		return StoredEntry{}, applied, nil, fmt.Errorf("replication: %s: read: %w", g.id, err)
	}
	e, err := decodeEntry(raw)
	if err != nil {
		return StoredEntry{}, applied, nil, g.damaged(key, err)
	}
	if grid.Expired(e.Expiry, g.now()) {
		if linearizable {
			return StoredEntry{}, applied, []*gridpb.ExpiredKey{{Map: mapName, Key: key, Version: e.Version, Expiry: e.Expiry}}, nil
		}
		return StoredEntry{}, applied, nil, grid.ErrNotFound
	}
	e.Value = append([]byte(nil), e.Value...)
	return e, applied, nil, nil
}

// damaged reports a stored entry failing its checksum: the read fails with
// grid.ErrChecksum and the replica is quarantined (the host is told).
func (g *Group) damaged(key []byte, err error) error {
	g.corrupt.mark(fmt.Sprintf("stored entry %q fails its CRC32C on read", key))
	return fmt.Errorf("%w: %s key %q: %w", grid.ErrChecksum, g.id, key, err)
}

// ScanEntry is one entry returned by Scan.
type ScanEntry struct {
	Key []byte
	StoredEntry
}

// Scan returns up to limit entries (and about maxBytes of values) of a map
// whose keys start with prefix and are strictly after `after`, in key order,
// and whether more remain. Expired entries are skipped.
func (g *Group) Scan(ctx context.Context, mapName string, prefix, after []byte, limit, maxBytes int, linearizable bool) ([]ScanEntry, bool, uint64, error) {
	// Each round expires up to maxExpireInRead keys: a page behind many
	// expired keys not yet swept takes several.
	for range 8 * maxExpireRounds {
		out, more, applied, due, err := g.scan(ctx, mapName, prefix, after, limit, maxBytes, linearizable)
		if len(due) == 0 || err != nil {
			return out, more, applied, err
		}
		if err := g.expireInLog(ctx, due); err != nil {
			return nil, false, 0, err
		}
	}
	return nil, false, 0, g.unsettled()
}

// scan is one attempt of Scan; due lists the keys a linearizable scan
// found expired but still stored (it then returns nothing else).
func (g *Group) scan(ctx context.Context, mapName string, prefix, after []byte, limit, maxBytes int, linearizable bool) ([]ScanEntry, bool, uint64, []*gridpb.ExpiredKey, error) {
	v, applied, err := g.ReadView(ctx, linearizable)
	if err != nil {
		return nil, false, 0, nil, err
	}
	defer v.Close()
	mp := mapPrefix(g.id, mapName)
	full := append(append([]byte(nil), mp...), prefix...)
	var from []byte
	if len(after) > 0 {
		from = append(append([]byte(nil), mp...), after...)
	}
	var out []ScanEntry
	var due []*gridpb.ExpiredKey
	more := false
	size := 0
	now := g.now()
	err = v.Iterate(full, from, func(k, val []byte) (bool, error) {
		if len(out) == limit || (len(out) > 0 && size+len(val) > maxBytes) {
			more = true
			return false, nil
		}
		e, err := decodeEntry(val)
		if err != nil {
			return false, g.damaged(k[len(mp):], err)
		}
		if grid.Expired(e.Expiry, now) {
			if linearizable && len(due) < maxExpireInRead {
				due = append(due, &gridpb.ExpiredKey{Map: mapName, Key: append([]byte(nil), k[len(mp):]...), Version: e.Version, Expiry: e.Expiry})
			}
			return true, nil
		}
		e.Value = append([]byte(nil), e.Value...)
		out = append(out, ScanEntry{Key: append([]byte(nil), k[len(mp):]...), StoredEntry: e})
		size += len(k) + len(val)
		return true, ctx.Err()
	})
	if err != nil {
		return nil, false, 0, nil, err
	}
	if len(due) > 0 {
		return nil, false, applied, due, nil
	}
	return out, more, applied, nil, nil
}

// maxExpireInRead bounds the keys one read expires through the log at
// once; a read that finds more expires them over several rounds.
const maxExpireInRead = 256

// Each calls fn for every entry of a map whose key starts with prefix, in key
// order, from one consistent view (see ReadView), after verifying each
// value's checksum, skipping expired entries. It returns the applied index of the view. key and value
// are valid only during the call.
func (g *Group) Each(ctx context.Context, mapName string, prefix []byte, linearizable bool, fn func(key, value []byte) error) (uint64, error) {
	v, applied, err := g.ReadView(ctx, linearizable)
	if err != nil {
		return 0, err
	}
	defer v.Close()
	mp := mapPrefix(g.id, mapName)
	full := append(append([]byte(nil), mp...), prefix...)
	n := 0
	now := g.now()
	err = v.Iterate(full, nil, func(k, val []byte) (bool, error) {
		e, err := decodeEntry(val)
		if err != nil {
			return false, g.damaged(k[len(mp):], err)
		}
		if grid.Expired(e.Expiry, now) {
			return true, nil
		}
		if n++; n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return false, err
			}
		}
		return true, fn(k[len(mp):], e.Value)
	})
	return applied, err
}

// Status is a snapshot of the group's Raft state.
type Status struct {
	Group        GroupID
	State        string
	LeaderID     string
	Term         uint64
	Applied      uint64
	CommitIndex  uint64
	LastLogIndex uint64
	Voters       []string
}

// Status reports the group's state.
func (g *Group) Status() Status {
	lid, _ := g.Leader()
	st := Status{
		Group: g.id, State: g.raft.State().String(), LeaderID: lid, Term: g.raft.CurrentTerm(),
		Applied: g.Applied(), CommitIndex: g.raft.CommitIndex(), LastLogIndex: g.raft.LastIndex(),
	}
	if f := g.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.Suffrage == raft.Voter {
				st.Voters = append(st.Voters, string(s.ID))
			}
		}
	}
	return st
}

func (g *Group) shutdown() error {
	err := g.raft.Shutdown().Error()
	g.reads.wait()
	if c, ok := g.trans.(raft.WithClose); ok {
		_ = c.Close()
	}
	if cerr := g.logs.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("replication: %s: shutdown: %w", g.id, err)
	}
	return nil
}

// readGate implements the leader's read protocol: a barrier once per term
// (so the leader's state includes every entry committed by earlier leaders)
// and batched leadership confirmation.
type readGate struct {
	g *Group

	barrierMu   sync.Mutex
	barrierTerm uint64

	mu      sync.Mutex
	waiting []chan error
	running bool
	wg      sync.WaitGroup
}

func newReadGate(g *Group) *readGate { return &readGate{g: g} }

func (r *readGate) ensureBarrier(ctx context.Context) error {
	if r.g.raft.State() != raft.Leader {
		return r.g.notLeader()
	}
	term := r.g.raft.CurrentTerm()
	r.barrierMu.Lock()
	defer r.barrierMu.Unlock()
	if r.barrierTerm == term {
		return nil
	}
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := r.g.raft.Barrier(timeout).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return r.g.notLeader()
		}
		return fmt.Errorf("%w: %s: barrier: %w", grid.ErrNoLeader, r.g.id, err)
	}
	if r.g.raft.CurrentTerm() == term {
		r.barrierTerm = term
	}
	return nil
}

// verify waits for a leadership confirmation that starts after the call.
func (r *readGate) verify(ctx context.Context) error {
	ch := make(chan error, 1)
	r.mu.Lock()
	r.waiting = append(r.waiting, ch)
	if !r.running {
		r.running = true
		r.wg.Add(1)
		go r.loop()
	}
	r.mu.Unlock()
	select {
	case err := <-ch:
		if err != nil {
			if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
				return r.g.notLeader()
			}
			return fmt.Errorf("%w: %s: verify leader: %w", grid.ErrNoLeader, r.g.id, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// loop confirms leadership for everyone waiting when a round starts; those
// who arrive during a round wait for the next one.
func (r *readGate) loop() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		batch := r.waiting
		r.waiting = nil
		if len(batch) == 0 {
			r.running = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		if u, ok := r.g.trans.(urgentHeartbeater); ok {
			// VerifyLeader is answered by heartbeats: send them now.
			u.urgentHeartbeats(r.g.timing.HeartbeatTimeout / 5)
		}
		err := r.g.raft.VerifyLeader().Error()
		for _, ch := range batch {
			ch <- err
		}
	}
}

func (r *readGate) wait() { r.wg.Wait() }

// urgentHeartbeater is a transport that batches heartbeats and can be told
// that a group's next ones must not wait.
type urgentHeartbeater interface {
	urgentHeartbeats(d time.Duration)
}
