package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// catchUpSlack is how far (in applied entries) a learner may trail its
// partition's leader and still be promoted: under steady writes it never
// reaches the leader's index exactly, and raft brings a voter the rest of
// the way.
const catchUpSlack = 64

// manager does the metadata leader's work: it commits the founders' table,
// admits joining nodes, tracks their reports (declaring silent nodes
// suspect, then dead), keeps the metadata group's voters healthy, and moves
// replicas towards the placement grid.Desired computes. It runs on every
// node and acts only while that node leads the metadata group.
type manager struct {
	n *Node

	// mu serialises this leader's metadata writes: each reads the state,
	// decides, and commits a whole record or table.
	mu   sync.Mutex
	term uint64 // the metadata term the manager last acted in

	nextLead int // the partition whose leadership the reconciler checks next

	seenMu sync.Mutex
	seen   map[string]time.Time // last report per node, on this leader's clock
	loads  map[string]grid.Load
	// quarantined: the partitions each node last reported corrupt.
	quarantined map[string][]uint32
	warned      string // the last reconciler problem logged, to log each once
	// busy: the last tick found replica moves in flight or started some;
	// the loop then ticks faster, so that a move's stages (and the next
	// move) follow each other without waiting a report interval each.
	busy bool
}

func newManager(n *Node) *manager {
	return &manager{n: n, seen: map[string]time.Time{}, loads: map[string]grid.Load{}, quarantined: map[string][]uint32{}}
}

func (m *manager) loop(ctx context.Context) {
	slow := m.n.cfg.reportInterval()
	fast := max(slow/8, 50*time.Millisecond)
	tick := time.NewTimer(slow)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m.busy = false
		m.tick(ctx)
		if m.busy {
			tick.Reset(fast)
		} else {
			tick.Reset(slow)
		}
	}
}

func (m *manager) tick(ctx context.Context) {
	meta := m.n.meta
	if !meta.IsLeader() {
		m.term = 0
		return
	}
	// A new leader first applies everything earlier leaders committed, and
	// gives every node a fresh grace period: it has heard from none yet.
	if term := meta.Term(); term != m.term {
		bctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := meta.Barrier(bctx)
		cancel()
		if err != nil {
			return
		}
		m.seenMu.Lock()
		now := time.Now()
		for _, r := range meta.Meta().Nodes() {
			m.seen[r.ID] = now
		}
		m.seenMu.Unlock()
		m.term = term
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, step := range []struct {
		name string
		f    func(context.Context) error
	}{
		{"bootstrap", m.bootstrap},
		{"failure detection", m.detect},
		{"metadata membership", m.metaMembers},
		{"replica moves", m.reconcile},
	} {
		if err := step.f(ctx); err != nil {
			if ctx.Err() == nil {
				m.warnOnce(step.name, err)
			}
			return
		}
	}
	m.warned = ""
}

func (m *manager) warnOnce(step string, err error) {
	msg := step + ": " + err.Error()
	if msg != m.warned {
		m.n.log.Warn("metadata leader", "step", step, "err", err)
		m.warned = msg
	}
}

func (m *manager) propose(ctx context.Context, cmd *gridpb.MetaCommand) error {
	res, err := m.n.meta.Propose(ctx, cmd)
	if err != nil {
		return err
	}
	return resultErr(res)
}

func (m *manager) putRecord(ctx context.Context, r grid.NodeRecord) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("node: encode record %s: %w", r.ID, err)
	}
	return m.propose(ctx, &gridpb.MetaCommand{Op: &gridpb.MetaCommand_UpsertNode{UpsertNode: &gridpb.UpsertNodeOp{RecordJson: raw}}})
}

// putTable commits t as the successor of the current table. The node list
// is rebuilt from the records, so every address a client needs is there.
func (m *manager) putTable(ctx context.Context, t *grid.Table) error {
	cur := m.n.meta.Meta().SharedTable()
	var epoch uint64
	if cur != nil {
		epoch = cur.Epoch
	}
	next := t.Clone()
	next.Epoch = epoch + 1
	if recs := m.n.meta.Meta().Nodes(); len(recs) > 0 {
		used := map[string]bool{}
		for _, p := range next.Partitions {
			for _, r := range p.Replicas {
				used[r] = true
			}
			used[p.Learner] = true
		}
		next.Nodes = next.Nodes[:0]
		for _, r := range recs {
			if r.State != grid.StateRemoved || used[r.ID] {
				next.Nodes = append(next.Nodes, grid.Node{ID: r.ID, Addr: r.Addr, Labels: r.Labels})
			}
		}
	}
	if err := next.Validate(); err != nil {
		return fmt.Errorf("node: table to commit: %w", err)
	}
	raw, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("node: encode table: %w", err)
	}
	res, err := m.n.meta.Propose(ctx, &gridpb.MetaCommand{Op: &gridpb.MetaCommand_SetTable{SetTable: &gridpb.SetTableOp{ExpectedEpoch: epoch, TableJson: raw}}})
	if err != nil {
		return err
	}
	if !res.Ok {
		return fmt.Errorf("node: table epoch moved from %d to %d meanwhile", epoch, res.Version)
	}
	return nil
}

// bootstrap commits what a new cluster starts with: the founders' table,
// their records, and the join secret.
func (m *manager) bootstrap(ctx context.Context) error {
	ms := m.n.meta.Meta()
	if ms.SharedTable() == nil {
		if len(m.n.static.Partitions) == 0 {
			return errors.New("no partition table committed and this node has no static one")
		}
		raw, err := json.Marshal(m.n.static)
		if err != nil {
			return err
		}
		if err := m.propose(ctx, &gridpb.MetaCommand{Op: &gridpb.MetaCommand_SetTable{SetTable: &gridpb.SetTableOp{ExpectedEpoch: 0, TableJson: raw}}}); err != nil {
			return err
		}
	}
	for _, nd := range m.n.static.Nodes {
		if _, ok := ms.Node(nd.ID); !ok {
			if err := m.putRecord(ctx, grid.NodeRecord{Node: nd, State: grid.StateActive}); err != nil {
				return err
			}
		}
	}
	if m.n.cfg.JoinToken != "" && ms.JoinSecret() == nil {
		return m.propose(ctx, &gridpb.MetaCommand{Op: &gridpb.MetaCommand_SetJoinSecret{SetJoinSecret: &gridpb.SetJoinSecretOp{TokenSha256: tokenHash(m.n.cfg.JoinToken)}}})
	}
	return nil
}

// admit handles a join at the metadata leader.
func (m *manager) admit(ctx context.Context, req *gridpb.JoinRequest) (*gridpb.JoinResponse, error) {
	ms := m.n.meta.Meta()
	secret := ms.JoinSecret()
	if secret == nil && (m.n.cfg.JoinToken != "" || ms.SharedTable() == nil) {
		return nil, fmt.Errorf("%w: the cluster is still starting; retry", grid.ErrNoLeader)
	}
	if secret == nil {
		return nil, fmt.Errorf("%w: this cluster was founded without --join-token and admits no joins", grid.ErrJoinRefused)
	}
	if !tokenMatches(secret, req.Token) {
		return nil, fmt.Errorf("%w: wrong join token", grid.ErrJoinRefused)
	}
	var rec grid.NodeRecord
	if err := json.Unmarshal(req.RecordJson, &rec); err != nil {
		return nil, fmt.Errorf("%w: join record: %v", grid.ErrBadRequest, err)
	}
	rec.State = grid.StateJoining
	if err := rec.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", grid.ErrBadRequest, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, other := range ms.Nodes() {
		if other.State == grid.StateRemoved {
			continue
		}
		switch {
		case other.ID == rec.ID && other.Addr == rec.Addr && other.State == grid.StateJoining:
			// The same node asking again (its first answer was lost).
			return m.admitted(ctx, rec)
		case other.ID == rec.ID:
			return nil, fmt.Errorf("%w: node id %q is already a member (%s, at %s)", grid.ErrNodeExists, rec.ID, other.State, other.Addr)
		case other.Addr == rec.Addr:
			return nil, fmt.Errorf("%w: address %s is already used by node %q", grid.ErrNodeExists, rec.Addr, other.ID)
		}
	}
	rec.Load = grid.Load{}
	if err := m.putRecord(ctx, rec); err != nil {
		return nil, err
	}
	return m.admitted(ctx, rec)
}

func (m *manager) admitted(ctx context.Context, rec grid.NodeRecord) (*gridpb.JoinResponse, error) {
	m.markSeen(rec.ID, grid.Load{})
	if err := m.n.meta.AddLearner(ctx, rec.ID, rec.Addr); err != nil {
		return nil, fmt.Errorf("%w: add %s to the metadata group: %w", grid.ErrAmbiguous, rec.ID, err)
	}
	m.n.log.Info("node admitted", "id", rec.ID, "addr", rec.Addr, "arch", rec.Caps.Arch, "labels", rec.Caps.Labels)
	resp := &gridpb.JoinResponse{}
	if t := m.n.meta.Meta().SharedTable(); t != nil {
		resp.TableEpoch = t.Epoch
	}
	return resp, nil
}

func (m *manager) markSeen(id string, l grid.Load) {
	m.seenMu.Lock()
	defer m.seenMu.Unlock()
	m.seen[id] = time.Now()
	m.loads[id] = l
}

// report records a node's report at the metadata leader and tells the
// node its state.
func (m *manager) report(ctx context.Context, req *gridpb.ReportRequest) (*gridpb.ReportResponse, error) {
	var load grid.Load
	if err := json.Unmarshal(req.LoadJson, &load); err != nil {
		return nil, fmt.Errorf("%w: load report: %v", grid.ErrBadRequest, err)
	}
	var caps grid.Capabilities
	if err := json.Unmarshal(req.CapsJson, &caps); err != nil {
		return nil, fmt.Errorf("%w: capabilities: %v", grid.ErrBadRequest, err)
	}
	rec, ok := m.n.meta.Meta().Node(req.NodeId)
	if !ok {
		// A founder reporting before bootstrap has committed its record.
		if _, founder := m.n.static.Node(req.NodeId); founder {
			m.markSeen(req.NodeId, load)
			return &gridpb.ReportResponse{State: string(grid.StateJoining)}, nil
		}
		return &gridpb.ReportResponse{State: "unknown", Message: "this node is not a member of the cluster: start it with --join and the join token"}, nil
	}
	if rec.State == grid.StateRemoved {
		return &gridpb.ReportResponse{State: string(rec.State), Message: "this node was removed from the cluster: stop it, wipe its data dir, and join again to reuse it"}, nil
	}
	m.markSeen(req.NodeId, load)
	m.seenMu.Lock()
	m.quarantined[req.NodeId] = req.Quarantined
	m.seenMu.Unlock()
	resp := &gridpb.ReportResponse{State: string(rec.State)}
	next := rec
	oldCaps, _ := json.Marshal(rec.Caps)
	newCaps, _ := json.Marshal(caps)
	if !bytes.Equal(oldCaps, newCaps) {
		next.Caps = caps
	}
	switch rec.State {
	case grid.StateSuspect:
		next.State = grid.StateActive
	case grid.StateJoining:
		// Active once the metadata log (with a table) has reached it.
		if req.TableEpoch > 0 {
			next.State = grid.StateActive
		}
	case grid.StateDead:
		next.State = grid.StateActive
		resp.Message = "this node was declared dead and its replicas were re-created elsewhere; it removes its stale partitions as the current table reaches it"
	}
	// Loads reach the records (which every node reads for task planning)
	// every few reports, not every one: the metadata log stays quiet. A
	// disk running low or recovering goes in at once: a node low on disk
	// hands its leaderships only to peers whose records say they have room.
	stale := time.Since(rec.Load.ReportedAt) > 5*m.n.cfg.reportInterval() || load.DiskLow != rec.Load.DiskLow
	if !bytes.Equal(oldCaps, newCaps) || next.State != rec.State || stale {
		// Another metadata write is running: the next report retries.
		if m.mu.TryLock() {
			defer m.mu.Unlock()
			next.Load = load
			if err := m.putRecord(ctx, next); err != nil {
				return nil, err
			}
			resp.State = string(next.State)
			if next.State != rec.State {
				m.n.log.Info("node state", "id", rec.ID, "from", rec.State, "to", next.State)
			}
		}
	}
	return resp, nil
}

// views lists the records with the latest loads and silences.
func (m *manager) views() []NodeView {
	recs := m.n.meta.Meta().Nodes()
	m.seenMu.Lock()
	defer m.seenMu.Unlock()
	out := make([]NodeView, 0, len(recs))
	now := time.Now()
	for _, r := range recs {
		v := NodeView{NodeRecord: r}
		if l, ok := m.loads[r.ID]; ok && !l.ReportedAt.IsZero() {
			v.Load = l
		}
		if t, ok := m.seen[r.ID]; ok {
			v.SilentMS = now.Sub(t).Milliseconds()
		}
		out = append(out, v)
	}
	return out
}

// detect declares silent nodes suspect (no new replicas) and then dead
// (their replicas are re-created elsewhere).
func (m *manager) detect(ctx context.Context) error {
	dead := m.n.cfg.deadAfter()
	now := time.Now()
	for _, r := range m.n.meta.Meta().Nodes() {
		switch r.State {
		case grid.StateActive, grid.StateSuspect, grid.StateDraining, grid.StateJoining:
		default:
			continue
		}
		m.seenMu.Lock()
		last, ok := m.seen[r.ID]
		if !ok {
			m.seen[r.ID], last = now, now
		}
		m.seenMu.Unlock()
		silent := now.Sub(last)
		next := r.State
		switch {
		case silent > dead:
			next = grid.StateDead
		case silent > dead/3 && r.State == grid.StateActive:
			next = grid.StateSuspect
		}
		if next == r.State {
			continue
		}
		m.n.log.Warn("node state", "id", r.ID, "from", r.State, "to", next, "silent", silent.Round(time.Millisecond))
		r.State = next
		if err := m.putRecord(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// metaVoterTarget: 3 metadata voters, or 5 in fleets of 7 or more healthy
// nodes; fewer only while the cluster is smaller than that.
func metaVoterTarget(healthy int) int {
	switch {
	case healthy >= 7:
		return 5
	case healthy >= 3:
		return 3
	}
	return healthy
}

// metaMembers keeps the metadata group's membership in line with the node
// records, one change per tick: every live node follows (so it has the
// metadata locally), dead nodes are demoted but kept as non-voters (so a
// node that comes back learns it was replaced), removed nodes leave, and
// the voters are the most capable healthy nodes, changed only to replace
// an unhealthy voter or to grow with the fleet.
func (m *manager) metaMembers(ctx context.Context) error {
	meta := m.n.meta
	servers, err := meta.Members()
	if err != nil {
		return err
	}
	in := map[string]replication.Member{}
	for _, s := range servers {
		in[s.ID] = s
	}
	recs := m.n.meta.Meta().Nodes()
	byID := map[string]grid.NodeRecord{}
	var healthy []grid.NodeRecord
	for _, rec := range recs {
		byID[rec.ID] = rec
		if rec.State == grid.StateActive || rec.State == grid.StateDraining {
			healthy = append(healthy, rec)
		}
	}
	// Followers: live nodes missing from the configuration.
	for _, rec := range recs {
		if _, ok := in[rec.ID]; !ok && rec.State != grid.StateRemoved && rec.State != grid.StateDead {
			return meta.AddLearner(ctx, rec.ID, rec.Addr)
		}
	}
	// Voters: keep healthy ones, fill with the most capable healthy nodes.
	target := metaVoterTarget(len(healthy))
	var voters []string
	for _, s := range servers {
		// A draining voter is on its way out: it keeps voting until a
		// replacement votes, then steps down, so that stopping it after
		// its removal never costs the group its quorum.
		if rec, ok := byID[s.ID]; ok && s.Voter && (rec.State == grid.StateActive || rec.State == grid.StateSuspect) {
			voters = append(voters, rec.ID)
		}
	}
	sort.SliceStable(healthy, func(i, j int) bool { return moreCapable(healthy[i], healthy[j]) })
	if len(voters) < target {
		for _, rec := range healthy {
			if s, ok := in[rec.ID]; ok && !s.Voter && rec.State == grid.StateActive {
				m.n.log.Info("metadata voter added", "id", rec.ID)
				return meta.Promote(ctx, s.ID, s.Addr)
			}
		}
	}
	// Unhealthy voters step down once enough healthy voters exist.
	healthyVoters := 0
	for _, id := range voters {
		if byID[id].State != grid.StateSuspect {
			healthyVoters++
		}
	}
	self := m.n.cfg.ID
	for _, s := range servers {
		rec, known := byID[s.ID]
		id := s.ID
		switch {
		case !known || rec.State == grid.StateRemoved:
			if id == self {
				return meta.TransferLeadership("", "")
			}
			return m.leaveMeta(ctx, id)
		case s.Voter && (rec.State == grid.StateDead || rec.State == grid.StateDraining) && healthyVoters >= min(target, 3):
			if id == self {
				return meta.TransferLeadership("", "")
			}
			m.n.log.Info("metadata voter demoted", "id", id, "state", rec.State)
			return meta.Demote(ctx, id)
		}
	}
	return nil
}

// leaveMeta takes a removed (or unknown) node out of the metadata group's
// configuration. A voter is first replaced by an active non-voter, if the
// group would otherwise fall below its voter target, so stopping the node
// right after never costs the group its quorum.
func (m *manager) leaveMeta(ctx context.Context, id string) error {
	meta := m.n.meta
	members, err := meta.Members()
	if err != nil {
		return fmt.Errorf("%w: metadata configuration: %w", grid.ErrNoLeader, err)
	}
	var member *replication.Member
	var candidates []grid.NodeRecord
	otherVoters := 0
	for _, s := range members {
		if s.ID == id {
			member = &s
			continue
		}
		if s.Voter {
			otherVoters++
		}
		if rec, ok := meta.Meta().Node(s.ID); ok && !s.Voter && rec.State == grid.StateActive {
			candidates = append(candidates, rec)
		}
	}
	if member == nil {
		return nil
	}
	healthy := 0
	for _, rec := range m.n.meta.Meta().Nodes() {
		if rec.State == grid.StateActive || rec.State == grid.StateDraining {
			healthy++
		}
	}
	if member.Voter && otherVoters < metaVoterTarget(healthy) && len(candidates) > 0 {
		sort.SliceStable(candidates, func(i, j int) bool { return moreCapable(candidates[i], candidates[j]) })
		c := candidates[0]
		m.n.log.Info("metadata voter added", "id", c.ID, "replacing", id)
		if err := meta.Promote(ctx, c.ID, c.Addr); err != nil {
			return fmt.Errorf("%w: add metadata voter %s in place of %s: %w", grid.ErrNoLeader, c.ID, id, err)
		}
	}
	if err := meta.RemoveMember(ctx, id); err != nil {
		return fmt.Errorf("%w: remove %s from the metadata group: %w", grid.ErrNoLeader, id, err)
	}
	m.n.log.Info("metadata member removed", "id", id)
	return nil
}

// moreCapable orders nodes for metadata voting: fast fsync, then CPU, then id.
func moreCapable(a, b grid.NodeRecord) bool {
	if a.Caps.FsyncP99 != b.Caps.FsyncP99 {
		switch {
		case a.Caps.FsyncP99 == 0:
			return false
		case b.Caps.FsyncP99 == 0:
			return true
		}
		return a.Caps.FsyncP99 < b.Caps.FsyncP99
	}
	if a.Caps.CPUScore != b.Caps.CPUScore {
		return a.Caps.CPUScore > b.Caps.CPUScore
	}
	return a.ID < b.ID
}

// reconcile advances the replica moves in flight, then starts new ones
// towards the desired placement: at most one move per partition and one
// incoming and one outgoing move per node at a time.
func (m *manager) reconcile(ctx context.Context) error {
	cur := m.n.meta.Meta().Table()
	if cur == nil {
		return nil
	}
	t := cur.Clone()
	changed := false
	var errs []error
	for i := range t.Partitions {
		if !t.Partitions[i].Moving() {
			continue
		}
		done, err := m.advance(ctx, &t.Partitions[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("partition %d: %w", i, err))
		}
		changed = changed || done
	}
	if changed {
		if err := m.putTable(ctx, t); err != nil {
			return err
		}
		t = m.n.meta.Meta().Table()
	}
	repairs := m.startRepairs(t)
	started, err := m.startMoves(t)
	if err != nil {
		errs = append(errs, err)
		if !repairs {
			return errors.Join(errs...)
		}
	}
	started = started || repairs
	m.busy = changed || started || slices.ContainsFunc(t.Partitions, func(p grid.Partition) bool { return p.Moving() })
	if started {
		if err := m.putTable(ctx, t); err != nil {
			return err
		}
	} else if len(errs) == 0 {
		errs = append(errs, m.preferLeader(ctx, t))
	}
	return errors.Join(errs...)
}

// preferLeader checks one partition per tick, round robin, and moves its
// leadership to the replica placement prefers (the fastest fsync among the
// replicas, see grid.Desired) when another replica leads. Leadership then
// settles on fast disks without a burst of elections.
func (m *manager) preferLeader(ctx context.Context, t *grid.Table) error {
	if len(t.Partitions) == 0 {
		return nil
	}
	pol := grid.DefaultPolicy()
	pol.Replicas = t.Replicas
	plan, err := grid.Desired(m.n.meta.Meta().Nodes(), t, pol)
	if err != nil || len(plan.Moves) > 0 {
		return nil // moves come first; a planning error was reported by startMoves
	}
	p := &t.Partitions[m.nextLead%len(t.Partitions)]
	m.nextLead++
	want := plan.Table.Partitions[p.ID].Leader
	if p.Moving() || want == "" {
		return nil
	}
	if rec, ok := m.n.meta.Meta().Node(want); !ok || rec.State != grid.StateActive {
		return nil
	}
	mr, err := m.partitionLeader(ctx, p, &gridpb.MembershipRequest{Partition: uint32(p.ID), Op: "get"})
	if err != nil || mr.Leader == "" || mr.Leader == want {
		return nil
	}
	cur, _ := m.n.meta.Meta().Node(mr.Leader)
	best, _ := m.n.meta.Meta().Node(want)
	// Only for a clear gain, probes being noisy: a much faster disk, or,
	// between comparable disks, a leader holding at least two more
	// leaderships than the preferred replica (elections pile leaderships on
	// whichever node started first).
	faster := cur.Caps.FsyncP99 > 0 && best.Caps.FsyncP99 > 0 && best.Caps.FsyncP99*3/2 < cur.Caps.FsyncP99
	m.seenMu.Lock()
	curLeads, bestLeads := m.loads[cur.ID].Leaders, m.loads[best.ID].Leaders
	bestLow := m.loads[best.ID].DiskLow
	m.seenMu.Unlock()
	if bestLow {
		return nil // it would refuse the partition's writes (and hand the leadership away again)
	}
	comparable := cur.Caps.FsyncP99 == 0 || best.Caps.FsyncP99 <= cur.Caps.FsyncP99*3/2
	if !faster && !(comparable && curLeads >= bestLeads+2) {
		return nil
	}
	m.n.log.Info("moving partition leadership", "partition", p.ID, "from", mr.Leader, "to", want,
		"fsync_p99_from", cur.Caps.FsyncP99, "fsync_p99_to", best.Caps.FsyncP99, "leads_from", curLeads, "leads_to", bestLeads)
	_, err = m.partitionLeader(ctx, p, &gridpb.MembershipRequest{Partition: uint32(p.ID), Op: "transfer", NodeId: want})
	return err
}

// startRepairs marks in t (not yet committed) the rebuild of replicas their
// nodes reported quarantined, one per partition, when the partition has
// other replicas to rebuild from.
func (m *manager) startRepairs(t *grid.Table) bool {
	m.seenMu.Lock()
	defer m.seenMu.Unlock()
	started := false
	for id, parts := range m.quarantined {
		// A repair is started once per report: a started one leaves the
		// list, and the node's next report lists the partition again only
		// if it is still quarantined (else a rebuilt replica would be
		// repaired again on the strength of an old report).
		var waiting []uint32
		for _, pi := range parts {
			if int(pi) >= len(t.Partitions) {
				continue
			}
			p := &t.Partitions[pi]
			if !slices.Contains(p.Replicas, id) {
				continue
			}
			if p.Moving() {
				waiting = append(waiting, pi)
				continue
			}
			if len(p.Replicas) < 2 {
				m.warnOnce("repair", fmt.Errorf("partition %d's only replica, on %s, is corrupt: nothing to rebuild it from", p.ID, id))
				continue
			}
			p.Repair = id
			started = true
			m.n.log.Warn("replica repair started: removing the corrupt replica from its group", "partition", p.ID, "node", id)
		}
		m.quarantined[id] = waiting
	}
	return started
}

// startMoves marks new moves in t (not yet committed) from the plan.
func (m *manager) startMoves(t *grid.Table) (bool, error) {
	recs := m.n.meta.Meta().Nodes()
	states := map[string]grid.NodeState{}
	for _, r := range recs {
		states[r.ID] = r.State
	}
	pol := grid.DefaultPolicy()
	pol.Replicas = t.Replicas
	plan, err := grid.Desired(recs, t, pol)
	if err != nil {
		return false, err
	}
	incoming, outgoing := map[string]int{}, map[string]int{}
	for _, p := range t.Partitions {
		if p.Learner != "" {
			incoming[p.Learner]++
		}
		if p.Leaving != "" {
			outgoing[p.Leaving]++
		}
	}
	started := false
	for _, mv := range plan.Moves {
		p := &t.Partitions[mv.Partition]
		if p.Moving() {
			continue
		}
		if mv.Add != "" && incoming[mv.Add] > 0 {
			continue
		}
		// A dead node sends nothing (the partition's leader does), so its
		// replicas may all be replaced at once.
		if mv.Remove != "" && outgoing[mv.Remove] > 0 && states[mv.Remove] != grid.StateDead {
			continue
		}
		p.Learner, p.Leaving = mv.Add, mv.Remove
		if mv.Add != "" {
			incoming[mv.Add]++
		}
		if mv.Remove != "" {
			outgoing[mv.Remove]++
		}
		m.n.log.Info("replica move started", "partition", mv.Partition, "add", mv.Add, "remove", mv.Remove)
		m.n.metrics.movesBegun.Inc()
		started = true
	}
	return started, nil
}

// advance takes one partition's move one stage further: add the learner
// as a non-voter, promote it once caught up, move leadership off the
// leaving replica, remove it. It returns true when the move is over
// (completed or rolled back) and p has been updated for the next table.
// moveMustFinish reports whether p's replica move can only go forward:
// the leaving replica is already out of the group's configuration and the
// learner votes in its place. Rolling it back then (removing the promoted
// learner) would leave the table naming a replica the group no longer has,
// and the group a voter short for good.
func moveMustFinish(p *grid.Partition, members []*gridpb.Member) bool {
	if p.Leaving == "" || p.Learner == "" {
		return false
	}
	leavingIn, learnerVotes := false, false
	for _, s := range members {
		switch s.Id {
		case p.Leaving:
			leavingIn = true
		case p.Learner:
			learnerVotes = s.Voter
		}
	}
	return !leavingIn && learnerVotes
}

func (m *manager) advance(ctx context.Context, p *grid.Partition) (bool, error) {
	mr, err := m.partitionLeader(ctx, p, &gridpb.MembershipRequest{Partition: uint32(p.ID), Op: "get"})
	if err != nil {
		return false, err
	}
	member := func(id string) (*gridpb.Member, bool) {
		for _, s := range mr.Members {
			if s.Id == id {
				return s, true
			}
		}
		return nil, false
	}
	change := func(op, id, addr string) error {
		var err error
		mr, err = m.partitionLeader(ctx, p, &gridpb.MembershipRequest{Partition: uint32(p.ID), Op: op, NodeId: id, Addr: addr})
		return err
	}
	if r := p.Repair; r != "" && slices.Contains(p.Replicas, r) {
		// A corrupt replica leaves the configuration before its node drops
		// its state (a voter must never lose its log), then comes back as
		// a learner below.
		if mr.Leader == r {
			return false, change("transfer", "", "")
		}
		if _, in := member(r); in {
			if err := change("remove", r, ""); err != nil {
				return false, err
			}
		}
		p.Replicas = slices.DeleteFunc(slices.Clone(p.Replicas), func(id string) bool { return id == r })
		p.Learner = r
		m.n.log.Warn("corrupt replica removed from its group; it is rebuilt as a learner", "partition", p.ID, "node", r)
		return true, nil
	}
	if l := p.Learner; l != "" && !moveMustFinish(p, mr.Members) {
		rec, ok := m.n.meta.Meta().Node(l)
		if !ok || rec.State != grid.StateActive {
			// The node being added is gone or going: roll the move back.
			if _, in := member(l); in {
				if err := change("remove", l, ""); err != nil {
					return false, err
				}
			}
			m.n.log.Warn("replica move rolled back", "partition", p.ID, "learner", l, "state", rec.State)
			p.Learner, p.Leaving, p.Repair = "", "", ""
			return true, nil
		}
		s, in := member(l)
		if !in {
			return false, change("add_learner", l, rec.Addr)
		}
		if !s.Voter {
			applied, err := m.appliedOn(ctx, rec.Addr, p.ID)
			if err != nil {
				return false, err
			}
			if applied+catchUpSlack < mr.Applied {
				return false, nil
			}
			if err := change("promote", l, ""); err != nil {
				return false, err
			}
		}
	}
	if l := p.Leaving; l != "" {
		if _, in := member(l); in {
			if mr.Leader == l {
				target := p.Learner
				return false, change("transfer", target, "")
			}
			if err := change("remove", l, ""); err != nil {
				return false, err
			}
		}
	}
	reps := slices.DeleteFunc(slices.Clone(p.Replicas), func(id string) bool { return id == p.Leaving })
	if p.Learner != "" {
		reps = append(reps, p.Learner)
	}
	if p.Repair != "" {
		m.n.log.Warn("corrupt replica rebuilt from the leader's snapshot", "partition", p.ID, "node", p.Repair)
	} else {
		m.n.log.Info("replica move done", "partition", p.ID, "added", p.Learner, "removed", p.Leaving)
	}
	p.Replicas, p.Learner, p.Leaving, p.Repair = reps, "", "", ""
	return true, nil
}

// partitionLeader sends a membership request to partition p's leader,
// following not-leader hints from its replicas.
func (m *manager) partitionLeader(ctx context.Context, p *grid.Partition, req *gridpb.MembershipRequest) (*gridpb.MembershipResponse, error) {
	var resp *gridpb.MembershipResponse
	err := m.n.atPartitionLeader(ctx, m.n.meta.Meta().SharedTable(), *p, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = gridpb.NewClusterClient(cc).Membership(ctx, req)
		return err
	})
	return resp, err
}

// appliedOn asks the node at addr for its applied index of partition p.
func (m *manager) appliedOn(ctx context.Context, addr string, p int) (uint64, error) {
	var resp *gridpb.StatusResponse
	err := m.n.withPeer(ctx, addr, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = gridpb.NewAdminClient(cc).Status(ctx, &gridpb.StatusRequest{})
		return err
	})
	if err != nil {
		return 0, err
	}
	for _, g := range resp.Groups {
		if g.Partition == int32(p) {
			return g.AppliedIndex, nil
		}
	}
	return 0, fmt.Errorf("%w: partition %d not open on %s yet", grid.ErrPartitionNotHere, p, addr)
}

// nodeOp drains, undrains or removes a node.
func (m *manager) nodeOp(ctx context.Context, id, op string) (*gridpb.NodeOpResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ms := m.n.meta.Meta()
	rec, ok := ms.Node(id)
	if !ok {
		return nil, fmt.Errorf("%w: %q", grid.ErrUnknownNode, id)
	}
	t := ms.SharedTable()
	switch op {
	case "drain":
		switch rec.State {
		case grid.StateDraining:
			return &gridpb.NodeOpResponse{State: string(rec.State)}, nil
		case grid.StateActive, grid.StateSuspect:
		default:
			return nil, fmt.Errorf("%w: %s is %s; only an active or suspect node can be drained", grid.ErrBadRequest, id, rec.State)
		}
		// Refuse a drain that would leave partitions short of holders.
		recs := ms.Nodes()
		for i := range recs {
			if recs[i].ID == id {
				recs[i].State = grid.StateDraining
			}
		}
		pol := grid.DefaultPolicy()
		pol.Replicas = t.Replicas
		if _, err := grid.Desired(recs, t, pol); err != nil {
			return nil, fmt.Errorf("draining %s would leave its replicas nowhere to go: %w", id, err)
		}
		rec.State = grid.StateDraining
	case "undrain":
		if rec.State != grid.StateDraining {
			return nil, fmt.Errorf("%w: %s is %s, not draining", grid.ErrBadRequest, id, rec.State)
		}
		rec.State = grid.StateActive
	case "remove":
		if rec.State == grid.StateRemoved {
			if err := m.leaveMeta(ctx, id); err != nil {
				return nil, err
			}
			return &gridpb.NodeOpResponse{State: string(rec.State)}, nil
		}
		if held := len(t.Hosts(id)); held > 0 {
			return nil, fmt.Errorf("%w: %s holds %d partition replicas; drain it first (zerogrid node drain %s)", grid.ErrNodeBusy, id, held, id)
		}
		for _, p := range t.Partitions {
			if p.Leaving == id {
				return nil, fmt.Errorf("%w: %s is still leaving partition %d", grid.ErrNodeBusy, id, p.ID)
			}
		}
		if id == m.n.cfg.ID {
			// Hand the metadata group over first; the new leader removes it.
			if err := m.n.meta.TransferLeadership("", ""); err != nil {
				return nil, fmt.Errorf("%w: hand over metadata leadership before removing %s: %w", grid.ErrNoLeader, id, err)
			}
			return nil, fmt.Errorf("%w: metadata leadership moved off %s; retry the removal", grid.ErrNoLeader, id)
		}
		rec.State = grid.StateRemoved
		if err := m.putRecord(ctx, rec); err != nil {
			return nil, err
		}
		// Leave the metadata group before answering, so the operator may
		// stop the node as soon as this returns.
		if err := m.leaveMeta(ctx, id); err != nil {
			return nil, err
		}
		m.n.log.Info("node operation", "id", id, "op", op, "state", rec.State)
		return &gridpb.NodeOpResponse{State: string(rec.State)}, nil
	default:
		return nil, fmt.Errorf("%w: unknown node operation %q (drain, undrain, remove)", grid.ErrBadRequest, op)
	}
	if err := m.putRecord(ctx, rec); err != nil {
		return nil, err
	}
	m.n.log.Info("node operation", "id", id, "op", op, "state", rec.State)
	return &gridpb.NodeOpResponse{State: string(rec.State)}, nil
}
