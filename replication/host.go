package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// RaftTiming is the timing profile of every group on a host.
type RaftTiming struct {
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	SnapshotInterval   time.Duration
	SnapshotThreshold  uint64
	TrailingLogs       uint64
	MaxAppendEntries   int
	// LeaderlessCampaign, if set, is how long a group just opened waits to
	// hear of a leader before it hurries an election
	// (Group.campaignIfLeaderless): with quiet groups' long election
	// timeouts a new cluster, or one whose nodes all restarted, would
	// otherwise wait 10-20 s for its first leaders.
	LeaderlessCampaign time.Duration
	// Liveness is how long a peer node may stay silent on its heartbeat
	// stream while its connection is up before its node is suspected
	// (GRPCTransportConfig.LivenessTimeout; nodes set it from here).
	Liveness time.Duration
	// CutOffAfter is how long a follower may hear from no leader before it
	// counts as cut off (Group.CutOff).
	CutOffAfter time.Duration
	// MaxLogBytes bounds each group's Raft log in bytes as well as in
	// entries (0: entries only): the entries kept after a snapshot and
	// those between snapshots each hold about half of it (see retention.go).
	MaxLogBytes int64
}

// HeartbeatWindow is how long a node gathers the heartbeats of all its
// groups to one peer into one message (GRPCTransportConfig.HeartbeatWindow):
// one heartbeat interval's floor (raft sends every HeartbeatTimeout/10 to
// HeartbeatTimeout/5). A heartbeat then reaches its follower at most a
// tenth of a heartbeat timeout late, well inside the leader lease; idle
// CPU, most of it the system calls of sending and answering batches, went
// from 0.079-0.095 to 0.058-0.085 cores for 3 idle nodes of 32 partitions
// going from 20 ms to this 100 ms (BENCHMARKS.md). Reads that confirm leadership
// skip the window.
func (t RaftTiming) HeartbeatWindow() time.Duration { return t.HeartbeatTimeout / 10 }

// DefaultTiming suits ordinary servers on a LAN. Groups are quiet: a
// group's heartbeats go out every 1-2 s and its followers wait 10-20 s
// before they campaign on their own, because the node watches each peer
// it holds a connection to (Liveness, see GRPCTransport's probePeer): a
// leader's node that dies, pauses or is cut off is suspected within
// Liveness, and the groups it led elect at once (Host.SuspectPeer). Idle
// CPU of 3 nodes with 32 partitions went from 0.14-0.16 cores (1 s
// heartbeat timeout, 500 ms commit timeout) to ~0.05 (BENCHMARKS.md).
func DefaultTiming() RaftTiming {
	return RaftTiming{
		HeartbeatTimeout: 10 * time.Second, ElectionTimeout: 10 * time.Second, LeaderLeaseTimeout: 5 * time.Second,
		// CommitTimeout paces the AppendEntries an idle leader sends to carry
		// the commit index: a follower of a group that stopped being written
		// applies the last write up to twice this late (stale reads there
		// lag by as much; under steady writes every append carries it). At
		// 50 ms (raft's default) 32 idle groups kept 0.75 of a core busy on
		// 3 nodes; 1 s instead of 2 s cost 256 idle groups 0.17-0.20 cores
		// instead of 0.13. Writes are not delayed by it.
		CommitTimeout: 2 * time.Second,
		Liveness:      2 * time.Second,
		// Three heartbeat windows: a node restarting into a group that has
		// a leader hears from it well before (heartbeats 1-2 s apart, sent
		// within a 1 s window).
		LeaderlessCampaign: 3 * time.Second,
		// A follower that heard no leader for a heartbeat timeout (raft's own
		// sign of a lost leader) ends its watch streams.
		CutOffAfter: 10 * time.Second,
		// Log retention: every group keeps its log in the node's one store,
		// so 32 groups × (8192 entries between snapshots + 10240 kept after
		// one) held ~450 MB of log per node at 1M keys, all of it mapped. A
		// snapshot streams the group's key prefix from the engine, so
		// taking one more often is cheap; a follower more than TrailingLogs
		// behind gets one instead of the log.
		SnapshotInterval: 30 * time.Second, SnapshotThreshold: 2048,
		TrailingLogs: 2048, MaxAppendEntries: 64,
		// 2048 entries of 1 MiB values would be 2 GiB of log per group.
		MaxLogBytes: 64 << 20,
	}
}

// SmallTiming suits a Pi Zero: the default's quiet groups, a more patient
// liveness check (a 1 GHz core stalls longer), and smaller logs and
// messages.
func SmallTiming() RaftTiming {
	t := DefaultTiming()
	t.Liveness = 4 * time.Second
	t.SnapshotThreshold, t.TrailingLogs = 1024, 1024
	t.MaxLogBytes = 16 << 20
	// At most 16 entries per AppendEntries: with 1 MiB values a batch stays
	// near 16 MiB instead of 64 MiB on a 512 MB machine.
	t.MaxAppendEntries = 16
	return t
}

// TestTiming makes elections fast for tests, yet tolerant of the CPU stalls
// of several nodes sharing two cores (a 100 ms lease made leaders step down
// whenever a peer restarted). Groups are not quiet: their own timeouts find
// a lost leader before the liveness check does.
func TestTiming() RaftTiming {
	t := DefaultTiming()
	t.HeartbeatTimeout, t.ElectionTimeout, t.LeaderLeaseTimeout = 400*time.Millisecond, 400*time.Millisecond, 300*time.Millisecond
	t.CommitTimeout = 50 * time.Millisecond
	t.Liveness, t.CutOffAfter = time.Second, 1200*time.Millisecond
	t.LeaderlessCampaign = 0 // elections are fast anyway
	t.SnapshotThreshold, t.TrailingLogs = 1024, 256
	t.SnapshotInterval = 2 * time.Second
	return t
}

// HostConfig configures a Host.
type HostConfig struct {
	NodeID     string
	Dir        string // raft logs and snapshots, one subdirectory per group
	Engine     Engine
	Transports TransportFactory
	Timing     RaftTiming
	Logger     *slog.Logger
	// WatchRetention bounds each data partition's change log (zero: the
	// default retention).
	WatchRetention WatchRetention
	// Clock tells the time for reads of keys with an expiry and for the
	// expiry sweeper; nil: time.Now.
	Clock func() time.Time
	// Fatal is called when a group's state machine cannot persist an applied
	// entry: the replica would fall behind its own log. Default: panic.
	Fatal func(error)
	// OnCorrupt is told, once per running group, that its replica was found
	// corrupt (a stored entry or a log entry failing its checksum); the group
	// already refuses reads. It must not block: the caller may be the apply
	// goroutine. The node quarantines the group (Host.Quarantine).
	OnCorrupt func(id GroupID, reason string)
}

// Host runs every Raft group of one node over a shared engine and transport.
type Host struct {
	cfg    HostConfig
	logs   *logDB // every group's Raft log and stable state
	checks *checks
	// stop ends, and wg counts, the host's own goroutines (SuspectPeer).
	stop   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	groups map[GroupID]*Group
	// busy holds groups being recovered (RecoverGroup): not opened meanwhile.
	busy map[GroupID]bool
	// retentionKick wakes the retention check (a log grew past its mark).
	retentionKick chan struct{}
	closed        bool
}

// NewHost validates cfg and returns an empty host.
func NewHost(cfg HostConfig) (*Host, error) {
	var errs []error
	if cfg.NodeID == "" {
		errs = append(errs, errors.New("replication: host needs a node id"))
	}
	if cfg.Dir == "" {
		errs = append(errs, errors.New("replication: host needs a directory"))
	}
	if cfg.Engine == nil || cfg.Transports == nil {
		errs = append(errs, errors.New("replication: host needs an engine and a transport"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Fatal == nil {
		cfg.Fatal = func(err error) { panic(err) }
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Timing.HeartbeatTimeout == 0 {
		cfg.Timing = DefaultTiming()
	}
	if cfg.OnCorrupt == nil {
		cfg.OnCorrupt = func(GroupID, string) {}
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("replication: host directory: %w", err)
	}
	logs, err := openLogDB(filepath.Join(cfg.Dir, logDir))
	if err != nil {
		return nil, err
	}
	if err := migrateBoltLog(context.Background(), logs, filepath.Join(cfg.Dir, oldLogDBFile)); err != nil {
		logs.Close()
		return nil, err
	}
	h := &Host{cfg: cfg, logs: logs, checks: newChecks(), groups: map[GroupID]*Group{}, busy: map[GroupID]bool{}, stop: make(chan struct{}),
		retentionKick: make(chan struct{}, 1)}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.retentionLoop()
	}()
	return h, nil
}

// logDir is the node's one Raft log store (segment files), in
// HostConfig.Dir; oldLogDBFile is the shared bbolt file of earlier
// versions, migrated into it at open.
const (
	logDir       = "raft-log"
	oldLogDBFile = "raft-log.db"
)

// GroupKind selects a group's state machine.
type GroupKind int

const (
	// KindData is a data partition.
	KindData GroupKind = iota
	// KindMeta is the metadata group.
	KindMeta
)

// OpenGroup starts group id. If the group has no Raft state on disk and
// bootstrap is not empty, the group is bootstrapped with those voters (every
// initial member bootstraps with the same list).
func (h *Host) OpenGroup(ctx context.Context, id GroupID, kind GroupKind, bootstrap []Member) (*Group, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrHostClosed
	}
	if _, ok := h.groups[id]; ok || h.busy[id] {
		return nil, fmt.Errorf("%w: %s", ErrGroupExists, id)
	}
	g, err := h.openGroup(ctx, id, kind, bootstrap, nil)
	if err != nil {
		return nil, err
	}
	h.groups[id] = g
	h.watchLeaderless(g)
	return g, nil
}

// watchLeaderless starts the group's leaderless campaign, if the timing
// asks for one (see RaftTiming.LeaderlessCampaign). Called with h.mu held
// and h.closed false, so Close waits for it.
func (h *Host) watchLeaderless(g *Group) {
	t := h.cfg.Timing.LeaderlessCampaign
	if t <= 0 {
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		g.campaignIfLeaderless(h, t)
	}()
}

// openGroup opens group id. With alone set, the group's Raft configuration
// is first rewritten to that one voter (RecoverGroup).
func (h *Host) openGroup(ctx context.Context, id GroupID, kind GroupKind, bootstrap []Member, alone *Member) (*Group, error) {
	if kind == KindData {
		if reason, bad := h.quarantineMark(id); bad {
			return nil, fmt.Errorf("%w: %s: %s", ErrQuarantined, id, reason)
		}
	}
	dir := filepath.Join(h.cfg.Dir, id.String())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("replication: %s: %w", id, err)
	}
	corrupt := &corruption{notify: func(reason string) { h.cfg.OnCorrupt(id, reason) }}
	if err := h.migrateLog(ctx, id, kind, dir); err != nil {
		return nil, err
	}
	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft-" + id.String(), Level: hclog.Warn, Output: slogWriter{h.cfg.Logger}})
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 1, hlog) // one kept: the engine, not the snapshot, is the state
	if err != nil {
		return nil, fmt.Errorf("replication: %s: open snapshot store: %w", id, err)
	}
	var snapIndex uint64
	if list, err := snaps.List(); err == nil && len(list) > 0 {
		snapIndex = list[0].Index
	}
	// raft reads every entry after its snapshot while it starts, and panics
	// on one it cannot read: those are checked first. Older entries are
	// checked when read (GetLog) and by the scrub.
	bad, err := h.logs.verifyGroup(id, snapIndex+1)
	if err != nil {
		return nil, fmt.Errorf("replication: %s: verify raft log: %w", id, err)
	}
	if bad != "" {
		if kind != KindData {
			return nil, fmt.Errorf("%w: %s: %s", ErrCorrupt, id, bad)
		}
		return nil, h.quarantineClosed(ctx, id, bad)
	}
	logs := h.logs.group(id, corrupt.mark)
	logs.kick = func() {
		select {
		case h.retentionKick <- struct{}{}:
		default:
		}
	}
	// A batch a crash interrupted while it was committed in parts is
	// finished (or discarded) before anything reads the group's state.
	if err := openIntent(ctx, h.cfg.Engine, id); err != nil {
		return nil, err
	}
	var app applier
	var meta *MetaState
	switch kind {
	case KindMeta:
		meta, err = newMetaState(id, h.cfg.Engine)
		if err != nil {
			return nil, err
		}
		app = meta
	default:
		app, err = newKVApplier(id, h.cfg.Engine, h.cfg.WatchRetention, h.checks, corrupt)
		if err != nil {
			return nil, err
		}
	}
	sm, err := newStateMachine(id, h.cfg.Engine, app, h.cfg.Logger, h.cfg.Fatal)
	if err != nil {
		return nil, err
	}
	restore, err := needsRestore(h.cfg.Engine, id, snapIndex)
	if err != nil {
		return nil, err
	}

	t := h.cfg.Timing
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(h.cfg.NodeID)
	rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = t.HeartbeatTimeout, t.ElectionTimeout, t.LeaderLeaseTimeout
	rc.CommitTimeout, rc.SnapshotInterval, rc.SnapshotThreshold = t.CommitTimeout, t.SnapshotInterval, t.SnapshotThreshold
	rc.TrailingLogs, rc.MaxAppendEntries = t.TrailingLogs, t.MaxAppendEntries
	rc.BatchApplyCh = true
	rc.NoSnapshotRestoreOnStart = !restore
	rc.NoLegacyTelemetry = true
	rc.Logger = hlog

	trans := h.cfg.Transports.Transport(id)
	has, err := raft.HasExistingState(logs, logs, snaps)
	if err != nil {
		return nil, fmt.Errorf("replication: %s: inspect raft state: %w", id, err)
	}
	if !has && len(bootstrap) == 0 && kind == KindData && sm.Applied() > 0 {
		// State without a log (the log was lost): as a voter with an empty
		// log this replica could elect a leader missing committed entries.
		return nil, h.quarantineClosed(ctx, id, fmt.Sprintf("state at index %d but no raft log", sm.Applied()))
	}
	if alone != nil {
		if !has {
			return nil, fmt.Errorf("%w: %s has no raft state to recover from", ErrNoGroup, id)
		}
		// raft restores the newest snapshot, applies every entry after it
		// and writes a snapshot carrying the new configuration. The engine
		// already holds what it holds: only an incomplete state is
		// restored; entries it has are skipped by index.
		fsm := &recoverFSM{stateMachine: sm, restore: restore}
		if err := raft.RecoverCluster(rc, fsm, logs, logs, snaps, trans, raft.Configuration{Servers: servers([]Member{*alone})}); err != nil {
			return nil, fmt.Errorf("replication: %s: recover as a group of one: %w", id, err)
		}
		rc.NoSnapshotRestoreOnStart = true
		restore = false
	}
	if !has && len(bootstrap) > 0 {
		if err := raft.BootstrapCluster(rc, logs, logs, snaps, trans, raft.Configuration{Servers: servers(bootstrap)}); err != nil {
			return nil, fmt.Errorf("replication: %s: bootstrap: %w", id, err)
		}
	}
	r, err := raft.NewRaft(rc, sm, logs, logs, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("replication: %s: start raft: %w", id, err)
	}
	g := &Group{id: id, kind: kind, raft: r, sm: sm, meta: meta, logs: logs, glog: logs, trans: trans, timing: t, opened: time.Now(), corrupt: corrupt, clock: h.cfg.Clock,
		bootstrapped: !has && len(bootstrap) > 0}
	g.reads = newReadGate(g)
	if restore {
		h.cfg.Logger.Warn("group state incomplete; restoring from snapshot", "group", id.String(), "snapshot_index", snapIndex)
	}
	return g, nil
}

// quarantineClosed records that group id, which could not be opened, is
// corrupt, and returns the ErrQuarantined error OpenGroup reports.
func (h *Host) quarantineClosed(ctx context.Context, id GroupID, reason string) error {
	h.cfg.Logger.Error("partition replica quarantined", "group", id.String(), "reason", reason)
	if err := h.markQuarantine(ctx, id, reason); err != nil {
		return err
	}
	return fmt.Errorf("%w: %s: %s", ErrQuarantined, id, reason)
}

// RemoveGroup retires this node's replica of group id: it shuts the group
// down, drops its state from the engine and deletes its Raft log and
// snapshots. The engine state goes first: a crash midway leaves a Raft log
// without state, which the next start either restores from a snapshot (if
// this node is still a replica) or removes (if it is not). Removing a group
// that is not open only deletes what is on disk.
func (h *Host) RemoveGroup(ctx context.Context, id GroupID) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrHostClosed
	}
	g, ok := h.groups[id]
	delete(h.groups, id)
	h.mu.Unlock()
	if ok {
		if err := g.shutdown(); err != nil {
			return err
		}
	}
	if err := h.cfg.Engine.DropPrefix(ctx, groupPrefix(id)); err != nil {
		return fmt.Errorf("replication: %s: drop state: %w", id, err)
	}
	if err := dropIntent(ctx, h.cfg.Engine, id); err != nil {
		return err
	}
	if err := h.cfg.Engine.Sync(); err != nil {
		return fmt.Errorf("replication: %s: sync after drop: %w", id, err)
	}
	if err := h.logs.dropGroup(id); err != nil {
		return fmt.Errorf("replication: %s: delete raft log: %w", id, err)
	}
	if err := os.RemoveAll(filepath.Join(h.cfg.Dir, id.String())); err != nil {
		return fmt.Errorf("replication: %s: delete snapshots: %w", id, err)
	}
	return nil
}

// migrateLog moves a group's Raft log from the per-group raft-boltdb file
// of earlier versions (dir/raft.db) into the shared store, then deletes the
// file. A crash midway leaves the file, and the next start copies it again.
func (h *Host) migrateLog(ctx context.Context, id GroupID, kind GroupKind, dir string) error {
	path := filepath.Join(dir, "raft.db")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	old, err := raftboltdb.New(raftboltdb.Options{
		Path:        path,
		BoltOptions: &bbolt.Options{Timeout: time.Second, ReadOnly: true, FreelistType: bbolt.FreelistMapType},
	})
	if err != nil {
		if kind == KindData && (errors.Is(err, bbolt.ErrInvalid) || errors.Is(err, bbolt.ErrChecksum) || errors.Is(err, bbolt.ErrVersionMismatch)) {
			// A damaged log file: this replica cannot take part safely.
			// Other errors (a lock timeout, too many open files, a
			// permission) are not the file's fault and are returned.
			return h.quarantineClosed(ctx, id, fmt.Sprintf("raft log %s cannot be opened: %v", path, err))
		}
		return fmt.Errorf("replication: %s: open raft log to migrate: %w", id, err)
	}
	err = h.logs.importGroup(ctx, id, old)
	if cerr := old.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("replication: %s: migrate raft log into the shared store: %w", id, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("replication: %s: remove migrated raft log: %w", id, err)
	}
	h.cfg.Logger.Info("raft log migrated into the shared store", "group", id.String())
	return nil
}

// OnDisk lists the groups that have a Raft directory on disk, open or not.
func (h *Host) OnDisk() ([]GroupID, error) {
	ents, err := os.ReadDir(h.cfg.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("replication: list groups: %w", err)
	}
	var out []GroupID
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if e.Name() == MetaGroup.String() {
			out = append(out, MetaGroup)
			continue
		}
		var n uint32
		if _, err := fmt.Sscanf(e.Name(), "p%d", &n); err == nil && GroupID(n).String() == e.Name() {
			out = append(out, GroupID(n))
		}
	}
	return out, nil
}

// Group returns an open group.
func (h *Host) Group(id GroupID) (*Group, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g, ok := h.groups[id]
	return g, ok
}

// LogStats returns the node's Raft log counters.
func (h *Host) LogStats() LogStats { return h.logs.stats() }

// Groups lists open groups.
func (h *Host) Groups() []*Group {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Group, 0, len(h.groups))
	for _, g := range h.groups {
		out = append(out, g)
	}
	return out
}

// Close shuts every group down and waits for it.
func (h *Host) Close(ctx context.Context) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	close(h.stop)
	groups := h.groups
	h.groups = map[GroupID]*Group{}
	h.mu.Unlock()
	var wg sync.WaitGroup
	errs := make(chan error, len(groups))
	for _, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- g.shutdown()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("replication: host close: %w", ctx.Err())
	}
	h.wg.Wait()
	h.checks.close()
	close(errs)
	all := []error{h.logs.Close()}
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// slogWriter routes hclog text into slog at warn level.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Warn(string(trimNL(p)))
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
