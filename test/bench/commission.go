package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// commissionConfig is the flags of issue 3's benchmarks: -commission (a
// node joins, then one dies) and -idle-scale (idle cost as replicas per
// node grow).
type commissionConfig struct {
	enabled    bool
	keys       uint64
	valueBytes int
	partitions int
	deadAfter  time.Duration
	runs       int
	poll       time.Duration
	limit      time.Duration

	idle         bool
	idleReplicas []int
	idleProfiles []string
	idleSettle   time.Duration
	idleWindow   time.Duration
	idleRuns     int
}

func (c *commissionConfig) flags(fs *flag.FlagSet) (replicas, profiles *string) {
	fs.BoolVar(&c.enabled, "commission", false, "run the commissioning benchmark instead: 3 nodes, load, a 4th joins (time to its share), one is killed (time to full replica count)")
	fs.Uint64Var(&c.keys, "commission-keys", 200_000, "commission: keys loaded before the join")
	fs.IntVar(&c.valueBytes, "commission-value-bytes", 100, fmt.Sprintf("commission: bytes per value (at least %d)", minRecordBytes))
	fs.IntVar(&c.partitions, "commission-partitions", 32, "commission: partitions")
	fs.DurationVar(&c.deadAfter, "commission-dead-after", 10*time.Second, "commission: every node's --dead-after (at least 3 report intervals: 6s default, 15s small)")
	fs.IntVar(&c.runs, "commission-runs", 2, "commission: runs, each on a fresh cluster")
	fs.DurationVar(&c.poll, "commission-poll", 100*time.Millisecond, "commission: how often the driver reads the table, the node list and every node's status")
	fs.DurationVar(&c.limit, "commission-limit", 5*time.Minute, "commission: give up on a phase (join, death) after this long")
	fs.BoolVar(&c.idle, "idle-scale", false, "run the idle-cost benchmark instead: per-node CPU and RSS of idle 3-node clusters as replicas per node grow")
	replicas = fs.String("idle-scale-replicas", "8,32,128", "idle-scale: replicas per node to measure (3 nodes, 3 replicas: the partition count)")
	profiles = fs.String("idle-scale-profiles", "default,small", "idle-scale: node profiles to measure")
	fs.DurationVar(&c.idleSettle, "idle-scale-settle", 10*time.Second, "idle-scale: wait after every partition has a leader, before the window")
	fs.DurationVar(&c.idleWindow, "idle-scale-window", 30*time.Second, "idle-scale: window over which CPU is measured; RSS is read at its end")
	fs.IntVar(&c.idleRuns, "idle-scale-runs", 2, "idle-scale: runs of every (profile, replicas) cell, each on a fresh cluster; runs go round the cells in turn")
	return replicas, profiles
}

func (c *commissionConfig) validate(replicas, profiles string) []error {
	var errs []error
	if c.enabled {
		if c.keys < 1 {
			errs = append(errs, errors.New("-commission-keys must be at least 1"))
		}
		if c.valueBytes < minRecordBytes {
			errs = append(errs, fmt.Errorf("-commission-value-bytes must be at least %d", minRecordBytes))
		}
		if c.partitions < 1 || c.partitions > 4096 {
			errs = append(errs, errors.New("-commission-partitions must be in 1..4096"))
		}
		if c.deadAfter <= 0 {
			errs = append(errs, errors.New("-commission-dead-after must be positive"))
		}
		if c.runs < 1 {
			errs = append(errs, errors.New("-commission-runs must be at least 1"))
		}
		if c.poll <= 0 || c.limit <= 0 {
			errs = append(errs, errors.New("-commission-poll and -commission-limit must be positive"))
		}
	}
	if c.idle {
		for _, s := range strings.Split(replicas, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 || n > 4096 {
				errs = append(errs, fmt.Errorf("-idle-scale-replicas: %q is not in 1..4096", s))
				continue
			}
			c.idleReplicas = append(c.idleReplicas, n)
		}
		for _, s := range strings.Split(profiles, ",") {
			switch s = strings.TrimSpace(s); s {
			case "default", "small", "test":
				c.idleProfiles = append(c.idleProfiles, s)
			default:
				errs = append(errs, fmt.Errorf("-idle-scale-profiles: %q is not default, small or test", s))
			}
		}
		if c.idleSettle < 0 || c.idleWindow <= 0 || c.idleRuns < 1 {
			errs = append(errs, errors.New("-idle-scale-settle must not be negative, -idle-scale-window must be positive, -idle-scale-runs at least 1"))
		}
	}
	if c.enabled && c.idle {
		errs = append(errs, errors.New("-commission and -idle-scale are separate runs: give one"))
	}
	return errs
}

// moveSpan is one replica move as the table showed it: from the poll that
// first saw the partition's learner/leaving set to the poll that saw them
// cleared, as offsets from the phase's start.
type moveSpan struct {
	Partition   int
	Add, Remove string
	Start, End  time.Duration // End is 0 while the move is in flight
}

// moveTracker turns successive tables into move spans.
type moveTracker struct {
	open map[int]*moveSpan
	done []moveSpan
}

func newMoveTracker() *moveTracker { return &moveTracker{open: map[int]*moveSpan{}} }

// observe takes one table read at offset at. A move that started and ended
// between two polls is not seen here (the table diff still counts its data).
func (m *moveTracker) observe(at time.Duration, t *grid.Table) {
	for _, p := range t.Partitions {
		o := m.open[p.ID]
		if o != nil && (!p.Moving() || o.Add != p.Learner || o.Remove != p.Leaving) {
			o.End = at
			m.done = append(m.done, *o)
			delete(m.open, p.ID)
			o = nil
		}
		if o == nil && p.Moving() {
			m.open[p.ID] = &moveSpan{Partition: p.ID, Add: p.Learner, Remove: p.Leaving, Start: at}
		}
	}
}

// spans returns the finished moves in the order they finished.
func (m *moveTracker) spans() []moveSpan { return slices.Clone(m.done) }

// copyKey names one replica being created: a partition on a node.
type copyKey struct {
	Node      string
	Partition int
}

// catchUp is when a new replica opened on its node (the learner was
// added) and when its applied index first reached every other replica's.
type catchUp struct {
	Opened, CaughtUp time.Duration // 0: not yet
}

// catchUpTracker follows replicas created during a phase, from the nodes'
// status: the groups each node hosts and their applied indexes.
type catchUpTracker struct {
	before map[copyKey]bool // hosted when the phase began: not new
	seen   map[copyKey]*catchUp
}

// newCatchUpTracker starts from what every node hosts now.
func newCatchUpTracker(applied map[string]map[int]uint64) *catchUpTracker {
	c := &catchUpTracker{before: map[copyKey]bool{}, seen: map[copyKey]*catchUp{}}
	for n, parts := range applied {
		for p := range parts {
			c.before[copyKey{n, p}] = true
		}
	}
	return c
}

// observe takes one poll: node → partition → applied index, for the live
// nodes that answered.
func (c *catchUpTracker) observe(at time.Duration, applied map[string]map[int]uint64) {
	for n, parts := range applied {
		for p, idx := range parts {
			k := copyKey{n, p}
			if c.before[k] {
				continue
			}
			s := c.seen[k]
			if s == nil {
				s = &catchUp{Opened: at}
				c.seen[k] = s
			}
			if s.CaughtUp != 0 || idx == 0 {
				continue
			}
			var most uint64
			for o, op := range applied {
				if o != n {
					most = max(most, op[p])
				}
			}
			if idx >= most {
				s.CaughtUp = at
			}
		}
	}
}

// copiedKeys counts the keys copied to new holders from before to after:
// for every partition, its keys times the replicas after has that before
// had not.
func copiedKeys(before, after *grid.Table, keysPer []uint64) (keys uint64, replicas int, err error) {
	if len(before.Partitions) != len(after.Partitions) || len(keysPer) != len(after.Partitions) {
		return 0, 0, fmt.Errorf("tables of %d and %d partitions, key counts for %d", len(before.Partitions), len(after.Partitions), len(keysPer))
	}
	for i, p := range after.Partitions {
		for _, r := range p.Replicas {
			if !slices.Contains(before.Partitions[i].Replicas, r) {
				keys += keysPer[i]
				replicas++
			}
		}
	}
	return keys, replicas, nil
}

// perSecond is n per second over d; 0 for no time.
func perSecond(n uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// commissionRun is one run: load, join, kill.
type commissionRun struct {
	Load      bulkResult
	KeysPer   []uint64
	Join      phaseTimes
	Death     phaseTimes
	Victim    string
	NewID     string
	NewShare  int     // replicas the new node holds once settled
	NewFair   float64 // its fair share per the placement
	SnapOnNew int     // partitions the new node received as a snapshot (has one in its snapshot store)
	MetaLead  string  // the metadata leader when the victim was picked
}

// phaseTimes is one phase (join or death), as offsets from its start.
type phaseTimes struct {
	LoadAvg    string
	Listening  time.Duration // join: the new process accepts connections
	StateAt    time.Duration // join: the node is active; death: the victim is dead
	FirstMove  time.Duration
	LastMove   time.Duration // the last move's end
	Settled    time.Duration // no move in flight or planned
	Moves      []moveSpan
	CatchUps   map[copyKey]catchUp
	KeysCopied uint64
	Copies     int // replicas created
	// Cluster CPU over the phase, in cores, and the rest of the machine's.
	ClusterCPU, OtherCPU float64
}

func runCommission(ctx context.Context, cfg config, stdout io.Writer, logf func(string, ...any)) error {
	cc := cfg.commission
	return runMode(ctx, cfg, stdout, logf, func(dir, bin string, report io.Writer) error {
		var runs []commissionRun
		for i := range cc.runs {
			logf("commission run %d of %d", i+1, cc.runs)
			r, err := commissionOnce(ctx, cc, bin, cfg.profile, filepath.Join(dir, fmt.Sprintf("commission-%d", i+1)), logf)
			if err != nil {
				return fmt.Errorf("commission run %d: %w", i+1, err)
			}
			runs = append(runs, r)
		}
		commissionReport(report, cfg, describeMachine(cfg), runs)
		return nil
	})
}

// runMode prepares the data dir and the binary, runs measure, and prints
// (and saves, with -out) the report it writes.
func runMode(ctx context.Context, cfg config, stdout io.Writer, logf func(string, ...any),
	measure func(dir, bin string, report io.Writer) error) error {
	dir, bin, cleanup, err := prepareDirAndBinary(ctx, &cfg, logf)
	if err != nil {
		return err
	}
	defer cleanup()
	var b strings.Builder
	if err := measure(dir, bin, &b); err != nil {
		return err
	}
	fmt.Fprint(stdout, b.String())
	if cfg.out != "" {
		return os.WriteFile(cfg.out, []byte(b.String()), 0o644)
	}
	return nil
}

// prepareDirAndBinary makes the data dir (unless given) and builds the
// binary (unless given); cleanup removes what should not be kept.
func prepareDirAndBinary(ctx context.Context, cfg *config, logf func(string, ...any)) (dir, bin string, cleanup func(), err error) {
	cleanup = func() {}
	if cfg.dir == "" {
		if cfg.dir, err = os.MkdirTemp("", "zerogrid-bench-"); err != nil {
			return "", "", cleanup, err
		}
		if !cfg.keep {
			d := cfg.dir
			cleanup = func() { os.RemoveAll(d) }
		}
	}
	logf("data and logs in %s", cfg.dir)
	bin = cfg.zgBin
	if bin == "" {
		bin = filepath.Join(cfg.dir, "zerogrid")
		logf("building zerogrid")
		if err := buildZerogrid(ctx, bin); err != nil {
			cleanup()
			return "", "", func() {}, err
		}
	}
	if bin, err = filepath.Abs(bin); err != nil {
		cleanup()
		return "", "", func() {}, err
	}
	return cfg.dir, bin, cleanup, nil
}

// commissionOnce runs one fresh cluster through the join and the death.
func commissionOnce(ctx context.Context, cc commissionConfig, bin, profile, dir string, logf func(string, ...any)) (commissionRun, error) {
	var r commissionRun
	logf("starting zerogrid (3 nodes, %d partitions, 3 replicas, profile %s, --dead-after %v)", cc.partitions, profile, cc.deadAfter)
	z, err := startZerogridConfig(ctx, localcluster.Config{
		Binary: bin, Dir: dir, Nodes: 3, Partitions: cc.partitions, Replicas: 3, Profile: profile,
		JoinToken: "bench-token", ExtraArgs: []string{"--dead-after", cc.deadAfter.String()},
	})
	if err != nil {
		return r, err
	}
	defer z.Close()

	gen := recordGen{seed: 1, size: cc.valueBytes, shops: 100}
	logf("loading %d keys with %d-byte values", cc.keys, cc.valueBytes)
	r.Load, err = bulkLoad(ctx, z.m, cc.partitions, gen, cc.keys, maxTxnWrites, 64<<10, 32, 10*time.Minute, nil)
	if err != nil {
		return r, err
	}
	if r.Load.Records != cc.keys {
		return r, fmt.Errorf("loaded %d of %d keys", r.Load.Records, cc.keys)
	}
	logf("loaded in %v", r.Load.Elapsed.Round(time.Millisecond))
	r.KeysPer = make([]uint64, cc.partitions)
	for i := range cc.keys {
		r.KeysPer[grid.PartitionOf(benchMap, gen.key(i), cc.partitions)]++
	}
	w := &watcher{z: z, poll: cc.poll, limit: cc.limit}
	if _, err := w.run(ctx, "settle after load", nil, nil, settledWith(nil)); err != nil {
		return r, err
	}

	// The join.
	before, err := z.client.Table(ctx)
	if err != nil {
		return r, err
	}
	logf("joining a 4th node")
	r.Join, err = w.run(ctx, "join", func() (err error) {
		r.NewID, err = z.cluster.Join(ctx, "")
		return err
	}, func(nodes []client.NodeInfo) bool {
		return hasState(nodes, r.NewID, grid.StateActive)
	}, settledWith(func(t *grid.Table, nodes []client.NodeInfo) error {
		if !hasState(nodes, r.NewID, grid.StateActive) {
			return fmt.Errorf("%s is not active", r.NewID)
		}
		if len(t.Hosts(r.NewID)) == 0 {
			return fmt.Errorf("%s holds no replica yet", r.NewID)
		}
		return nil
	}))
	if err != nil {
		return r, err
	}
	after, err := z.client.Table(ctx)
	if err != nil {
		return r, err
	}
	if r.Join.KeysCopied, r.Join.Copies, err = copiedKeys(before, after, r.KeysPer); err != nil {
		return r, err
	}
	r.NewShare = len(after.PartitionsOf(r.NewID))
	if nodes, err := z.client.Nodes(ctx); err == nil {
		pol := grid.DefaultPolicy()
		pol.Replicas = after.Replicas
		if plan, err := grid.Desired(recordsOf(nodes), after, pol); err == nil {
			r.NewFair = plan.Stats().Fair[r.NewID]
		}
	}
	r.SnapOnNew = snapshotsIn(filepath.Join(z.cluster.DataDir(r.NewID), "raft"))
	logf("join: %s holds %d replicas after %v; %d keys copied in %d replicas", r.NewID, r.NewShare,
		r.Join.Settled.Round(time.Millisecond), r.Join.KeysCopied, r.Join.Copies)

	// The death: a founder that does not lead the metadata group, so the
	// figure is re-replication, not a metadata election too.
	r.MetaLead = metaLeader(ctx, z)
	for _, id := range []string{"n3", "n2", "n1"} {
		if id != r.MetaLead {
			r.Victim = id
			break
		}
	}
	before = after
	logf("killing %s (kill -9; metadata leader %s)", r.Victim, r.MetaLead)
	r.Death, err = w.run(ctx, "death", func() error {
		return z.cluster.Kill(r.Victim)
	}, func(nodes []client.NodeInfo) bool {
		return hasState(nodes, r.Victim, grid.StateDead)
	}, settledWith(func(t *grid.Table, nodes []client.NodeInfo) error {
		if !hasState(nodes, r.Victim, grid.StateDead) {
			return fmt.Errorf("%s is not dead yet", r.Victim)
		}
		if n := len(t.Hosts(r.Victim)); n > 0 {
			return fmt.Errorf("%s still holds %d replicas", r.Victim, n)
		}
		for _, p := range t.Partitions {
			if len(p.Replicas) != t.Replicas {
				return fmt.Errorf("partition %d has %d replicas", p.ID, len(p.Replicas))
			}
		}
		return nil
	}))
	if err != nil {
		return r, err
	}
	after, err = z.client.Table(ctx)
	if err != nil {
		return r, err
	}
	if r.Death.KeysCopied, r.Death.Copies, err = copiedKeys(before, after, r.KeysPer); err != nil {
		return r, err
	}
	logf("death: %s dead after %v, replica count restored after %v; %d keys copied in %d replicas", r.Victim,
		r.Death.StateAt.Round(time.Millisecond), r.Death.Settled.Round(time.Millisecond), r.Death.KeysCopied, r.Death.Copies)
	return r, nil
}

func hasState(nodes []client.NodeInfo, id string, s grid.NodeState) bool {
	for _, n := range nodes {
		if n.ID == id {
			return n.State == s
		}
	}
	return false
}

func recordsOf(nodes []client.NodeInfo) []grid.NodeRecord {
	out := make([]grid.NodeRecord, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.NodeRecord)
	}
	return out
}

// settledWith is cond and: no move in flight, and the placement the
// cluster would compute from its records plans none (as
// test/commission_test.go waits).
func settledWith(cond func(*grid.Table, []client.NodeInfo) error) func(*grid.Table, []client.NodeInfo) error {
	return func(t *grid.Table, nodes []client.NodeInfo) error {
		if cond != nil {
			if err := cond(t, nodes); err != nil {
				return err
			}
		}
		for _, p := range t.Partitions {
			if p.Moving() {
				return fmt.Errorf("partition %d is moving", p.ID)
			}
		}
		pol := grid.DefaultPolicy()
		pol.Replicas = t.Replicas
		plan, err := grid.Desired(recordsOf(nodes), t, pol)
		if err != nil {
			return err
		}
		if len(plan.Moves) > 0 {
			return fmt.Errorf("%d moves planned", len(plan.Moves))
		}
		return nil
	}
}

// metaLeader is the node whose status says it leads the metadata group.
func metaLeader(ctx context.Context, z *zgStore) string {
	for _, id := range z.cluster.IDs() {
		if !z.cluster.Running(id) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := z.client.NodeStatus(sctx, z.cluster.Addr(id))
		cancel()
		if err != nil {
			continue
		}
		for _, g := range st.Groups {
			if g.Partition < 0 && strings.EqualFold(g.State, "leader") {
				return id
			}
		}
	}
	return ""
}

// snapshotsIn counts the groups under a node's raft dir whose snapshot
// store holds a snapshot.
func snapshotsIn(raftDir string) int {
	groups, err := os.ReadDir(raftDir)
	if err != nil {
		return 0
	}
	n := 0
	for _, g := range groups {
		if !strings.HasPrefix(g.Name(), "p") {
			continue
		}
		if snaps, err := os.ReadDir(filepath.Join(raftDir, g.Name(), "snapshots")); err == nil && len(snaps) > 0 {
			n++
		}
	}
	return n
}

// watcher polls a cluster through a phase.
type watcher struct {
	z           *zgStore
	poll, limit time.Duration
}

// run starts the phase (act, if any), then polls the table, the node list
// and every running node's status until done holds, recording moves,
// catch-ups and when milestone (if any) first held.
func (w *watcher) run(ctx context.Context, name string, act func() error, milestone func([]client.NodeInfo) bool,
	done func(*grid.Table, []client.NodeInfo) error) (phaseTimes, error) {
	var ph phaseTimes
	ph.LoadAvg = loadAvg()
	cu := newCatchUpTracker(w.applied(ctx))
	mt := newMoveTracker()
	cpu0, busy0 := pidTicks(w.livePIDs()), machineBusy()
	start := time.Now()
	if act != nil {
		if err := act(); err != nil {
			return ph, fmt.Errorf("%s: %w", name, err)
		}
		ph.Listening = time.Since(start)
	}
	deadline := start.Add(w.limit)
	var last error
	for {
		at := time.Since(start)
		t, terr := w.z.client.Table(ctx)
		nodes, nerr := w.z.client.Nodes(ctx)
		if terr == nil && nerr == nil {
			mt.observe(at, t)
			cu.observe(at, w.applied(ctx))
			if ph.StateAt == 0 && milestone != nil && milestone(nodes) {
				ph.StateAt = at
			}
			if last = done(t, nodes); last == nil {
				ph.Settled = at
				break
			}
		} else {
			last = errors.Join(terr, nerr)
		}
		if time.Now().After(deadline) {
			return ph, fmt.Errorf("%s: not settled after %v: %w", name, w.limit, last)
		}
		if sleepUntil(ctx, time.Now().Add(w.poll)); ctx.Err() != nil {
			return ph, ctx.Err()
		}
	}
	el := time.Since(start).Seconds()
	cpu := float64(ticksSince(cpu0, pidTicks(w.livePIDs()))) / clockTicks
	ph.ClusterCPU = cpu / el
	ph.OtherCPU = max(0, (float64(machineBusy()-busy0)/clockTicks-cpu)/el)
	ph.Moves = mt.spans()
	for i, m := range ph.Moves {
		if i == 0 || m.Start < ph.FirstMove {
			ph.FirstMove = m.Start
		}
		ph.LastMove = max(ph.LastMove, m.End)
	}
	ph.CatchUps = map[copyKey]catchUp{}
	for k, v := range cu.seen {
		ph.CatchUps[k] = *v
	}
	return ph, nil
}

// applied asks every running node for its partitions' applied indexes.
func (w *watcher) applied(ctx context.Context) map[string]map[int]uint64 {
	out := map[string]map[int]uint64{}
	for _, id := range w.z.cluster.IDs() {
		if !w.z.cluster.Running(id) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := w.z.client.NodeStatus(sctx, w.z.cluster.Addr(id))
		cancel()
		if err != nil {
			continue
		}
		m := map[int]uint64{}
		for _, g := range st.Groups {
			if g.Partition >= 0 {
				m[int(g.Partition)] = g.AppliedIndex
			}
		}
		out[id] = m
	}
	return out
}

// livePIDs are the running nodes' processes, joined ones included.
func (w *watcher) livePIDs() []int {
	var out []int
	for _, id := range w.z.cluster.IDs() {
		if !w.z.cluster.Running(id) {
			continue
		}
		if pid, err := w.z.pidOf(id); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// pidTicks is each process's CPU time, in clock ticks.
func pidTicks(pids []int) map[int]int64 {
	out := map[int]int64{}
	for _, p := range pids {
		if t, err := cpuTicks(p); err == nil {
			out[p] = t
		}
	}
	return out
}

// ticksSince sums the CPU time processes used from before to now: a
// process that has gone since counts nothing (its last ticks are lost), one
// that is new counts all its time.
func ticksSince(before, now map[int]int64) int64 {
	var n int64
	for p, t := range now {
		n += t - before[p]
	}
	return n
}

// machineBusy is the machine's busy CPU time, in clock ticks.
func machineBusy() int64 {
	b, _ := machineTicks()
	return b
}

// loadAvg is /proc/loadavg's first three fields.
func loadAvg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
