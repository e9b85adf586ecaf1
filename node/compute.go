package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/query"
	"github.com/zerogrid/zerogrid/replication"
)

// computeService runs jobs where the data lives: RunTask executes one task
// over this node's replica of a partition; Submit coordinates a whole job
// (plan, fan out, merge, retry, hedge) and streams progress.
type computeService struct {
	gridpb.UnimplementedComputeServer
	s *service
	// applyLocks serialise entry processors per key (striped by hash) on the
	// leader, so processors on a hot key queue instead of racing; the CAS
	// still guards against writes from elsewhere and leader changes.
	applyLocks [64]sync.Mutex
}

func jobFromSpec(spec *gridpb.JobSpec) query.Job {
	lim := query.DefaultLimits()
	if spec.StepBudget > 0 {
		lim.Steps = spec.StepBudget
	}
	if spec.DeadlineMs > 0 {
		lim.Deadline = time.Duration(spec.DeadlineMs) * time.Millisecond
	}
	if spec.OutputBytes > 0 {
		lim.OutputBytes = int(min(spec.OutputBytes, 64<<20))
	}
	if spec.MemoryBytes > 0 {
		lim.MemoryBytes = spec.MemoryBytes
	}
	return query.Job{Map: spec.Map, Prefix: spec.Prefix, Filter: spec.Filter, Agg: spec.Agg, Script: spec.Script,
		Func: spec.Func, Args: spec.Args, Limits: lim}
}

// jobCeiling is the most one task of a job may use on this node, whatever
// the job asks: steps, wall time, output and heap growth (a quarter of it
// with the small profile, a Pi Zero's).
func jobCeiling(profile string) query.Limits {
	l := query.Limits{Steps: 500_000_000, Deadline: 10 * time.Minute, OutputBytes: 64 << 20, MemoryBytes: 256 << 20}
	if profile == "small" {
		l.Steps, l.OutputBytes, l.MemoryBytes = l.Steps/4, l.OutputBytes/4, l.MemoryBytes/4
	}
	return l
}

// withinCeiling refuses a job that asks for more than ceil allows.
func withinCeiling(spec *gridpb.JobSpec, ceil query.Limits) error {
	var over []string
	if spec.StepBudget > ceil.Steps {
		over = append(over, fmt.Sprintf("%d steps (at most %d)", spec.StepBudget, ceil.Steps))
	}
	if d := time.Duration(spec.DeadlineMs) * time.Millisecond; spec.DeadlineMs < 0 || d > ceil.Deadline {
		over = append(over, fmt.Sprintf("a deadline of %d ms (at most %v)", spec.DeadlineMs, ceil.Deadline))
	}
	if spec.OutputBytes < 0 || spec.OutputBytes > int64(ceil.OutputBytes) {
		over = append(over, fmt.Sprintf("%d output bytes (at most %d)", spec.OutputBytes, ceil.OutputBytes))
	}
	if spec.MemoryBytes > ceil.MemoryBytes {
		over = append(over, fmt.Sprintf("%d bytes of memory (at most %d)", spec.MemoryBytes, ceil.MemoryBytes))
	}
	if len(over) > 0 {
		return fmt.Errorf("%w: the job asks for more than this node allows: %s", grid.ErrJobInvalid, strings.Join(over, ", "))
	}
	return nil
}

// jobErr maps query errors onto the grid sentinels the client understands,
// keeping query's message (which names the limit, the line, the function).
func jobErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, query.ErrStepBudget), errors.Is(err, query.ErrDeadline),
		errors.Is(err, query.ErrOutputCap), errors.Is(err, query.ErrMemoryCap):
		return fmt.Errorf("%w: %w", grid.ErrJobLimit, err)
	case errors.Is(err, query.ErrScript):
		return fmt.Errorf("%w: %w", grid.ErrJobFailed, err)
	case errors.Is(err, query.ErrSyntax), errors.Is(err, query.ErrUnknownAggregate),
		errors.Is(err, query.ErrUnknownFunction), errors.Is(err, query.ErrBadJob):
		return fmt.Errorf("%w: %w", grid.ErrJobInvalid, err)
	}
	return err
}

// fatalJobErr reports errors that no other replica would answer differently.
func fatalJobErr(err error) bool {
	return errors.Is(err, grid.ErrJobInvalid) || errors.Is(err, grid.ErrJobLimit) || errors.Is(err, grid.ErrJobFailed) ||
		errors.Is(err, grid.ErrUnknownMap) || errors.Is(err, grid.ErrInvalidMapName) || errors.Is(err, grid.ErrBadPartition)
}

func (c *computeService) compile(ctx context.Context, spec *gridpb.JobSpec) (*query.Program, query.Job, error) {
	if spec == nil {
		return nil, query.Job{}, fmt.Errorf("%w: missing job", grid.ErrBadRequest)
	}
	if err := withinCeiling(spec, jobCeiling(c.s.n.cfg.Profile)); err != nil {
		return nil, query.Job{}, err
	}
	job := jobFromSpec(spec)
	if err := grid.ValidateMapName(job.Map); err != nil {
		return nil, job, err
	}
	if err := job.Validate(); err != nil {
		return nil, job, jobErr(err)
	}
	if err := c.s.requireMap(ctx, job.Map); err != nil {
		return nil, job, err
	}
	prog, err := query.Compile(job, c.s.n.cfg.Functions)
	if err != nil {
		return nil, job, jobErr(err)
	}
	return prog, job, nil
}

func (c *computeService) RunTask(ctx context.Context, req *gridpb.TaskRequest) (*gridpb.TaskResult, error) {
	return c.runTask(ctx, req)
}

// runTask runs a task here (for a peer's RunTask, or in-process for a job
// this node coordinates) and counts it.
func (c *computeService) runTask(ctx context.Context, req *gridpb.TaskRequest) (*gridpb.TaskResult, error) {
	res, err := c.runTaskHere(ctx, req)
	c.s.n.metrics.taskRun(err)
	return res, err
}

func (c *computeService) runTaskHere(ctx context.Context, req *gridpb.TaskRequest) (*gridpb.TaskResult, error) {
	prog, job, err := c.compile(ctx, req.Job)
	if err != nil {
		return nil, err
	}
	g, err := c.s.group(int(req.Partition))
	remote := errors.Is(err, grid.ErrPartitionNotHere) && req.ReadRemote
	if err != nil && !remote {
		return nil, err
	}
	if d := c.s.n.cfg.TaskDelay; d > 0 { // test knob: a slow node
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	start := time.Now()
	linearizable := req.Job.Consistency == gridpb.Consistency_LINEARIZABLE
	var applied uint64
	var network int64
	var from string
	part, stats, err := prog.RunTask(ctx, func(fn func(key, value []byte) error) error {
		if remote {
			var err error
			network, from, err = c.eachRemote(ctx, int(req.Partition), req.Job, fn)
			return err
		}
		a, err := g.Each(ctx, job.Map, job.Prefix, linearizable, fn)
		applied = a
		return err
	})
	if err != nil {
		return nil, jobErr(err)
	}
	raw, err := part.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("node: encode partial: %w", err)
	}
	if remote {
		stats.BytesRead = 0 // nothing came from this node's store
	}
	return &gridpb.TaskResult{
		Partition: req.Partition, Node: c.s.n.cfg.ID, Partial: raw, Entries: stats.Entries, Matched: stats.Matched,
		BytesRead: stats.BytesRead, DurationUs: time.Since(start).Microseconds(), AppliedIndex: applied,
		BytesNetwork: network, ReadFrom: from,
	}, nil
}

// plannedTask is one partition's task and where it may run, best first.
// remote marks candidates that hold no replica and read the partition over
// the network.
type plannedTask struct {
	part   int
	cands  []grid.Node
	remote map[string]bool
	reason string
}

// planJob plans with this node's copy of the node records. When no node
// qualifies, that copy may trail the metadata leader's (a node that just
// joined or changed state): it plans again with the leader's records.
func (c *computeService) planJob(ctx context.Context, spec *gridpb.JobSpec) ([]plannedTask, error) {
	plan, err := c.plan(spec, c.s.n.meta.Meta().Nodes())
	if !errors.Is(err, grid.ErrNoEligibleNodes) || c.s.n.meta.IsLeader() {
		return plan, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, ferr := (&clusterService{s: c.s}).Nodes(ctx, &gridpb.NodesRequest{})
	var views []NodeView
	if ferr != nil || json.Unmarshal(resp.GetNodesJson(), &views) != nil {
		return nil, err // the local answer stands
	}
	recs := make([]grid.NodeRecord, 0, len(views))
	for _, v := range views {
		recs = append(recs, v.NodeRecord)
	}
	return c.plan(spec, recs)
}

// plan picks who runs each partition's task. Compute goes to the data: a
// replica runs it (the leader for a linearizable view, else the
// least-loaded replica by tasks planned so far, this node first on a tie).
// Data goes to compute when no replica meets the job's requirements, or
// when the cost model finds a node that is at least remoteAdvantage times
// faster even after moving the partition over the network.
func (c *computeService) plan(spec *gridpb.JobSpec, recs []grid.NodeRecord) ([]plannedTask, error) {
	t := c.s.n.table()
	req := requirementsFromSpec(spec.Requires)
	byID := make(map[string]grid.NodeRecord, len(recs))
	for _, r := range recs {
		byID[r.ID] = r
	}
	parts := spec.Partitions
	if len(parts) == 0 {
		for p := range t.Partitions {
			parts = append(parts, uint32(p))
		}
	}
	load := map[string]int{}
	self := c.s.n.cfg.ID
	var out []plannedTask
	seen := map[uint32]bool{}
	for _, p := range parts {
		if int(p) >= len(t.Partitions) {
			return nil, fmt.Errorf("%w: %d (cluster has %d)", grid.ErrBadPartition, p, len(t.Partitions))
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		reps := append([]string(nil), t.Partitions[p].Replicas...)
		reason := ""
		if spec.Consistency == gridpb.Consistency_LINEARIZABLE {
			leader := ""
			if g, ok := c.s.n.host.Group(replication.GroupID(p)); ok {
				leader, _ = g.Leader()
			}
			sort.SliceStable(reps, func(i, j int) bool { return reps[i] == leader && reps[j] != leader })
			reason = "leader (linearizable view)"
			if leader == "" {
				reason = "a replica; leader unknown here, follows its hint"
			}
		} else {
			sort.SliceStable(reps, func(i, j int) bool {
				if load[reps[i]] != load[reps[j]] {
					return load[reps[i]] < load[reps[j]]
				}
				return reps[i] == self && reps[j] != self
			})
			reason = fmt.Sprintf("least-loaded replica (stale view, %d tasks planned there before)", load[reps[0]])
		}
		repSet := map[string]bool{}
		var repRecs []grid.NodeRecord
		for _, id := range reps {
			repSet[id] = true
			if r, ok := byID[id]; ok {
				repRecs = append(repRecs, r)
			}
		}
		if !req.Empty() {
			reps = slicesFilter(reps, func(id string) bool { r, ok := byID[id]; return ok && usable(r) && req.Check(r) == nil })
		}
		bytes := partitionBytes(repRecs)
		remotes := remoteExecutors(recs, repSet, req, bytes)
		pt := plannedTask{part: int(p), remote: map[string]bool{}}
		switch {
		case len(reps) == 0 && len(remotes) == 0:
			return nil, fmt.Errorf("%w: partition %d: no node meets the job's requirements (replicas: %s)", grid.ErrNoEligibleNodes, p, excluded(t.Partitions[p].Replicas, byID, req))
		case len(reps) == 0:
			reason = fmt.Sprintf("data goes to compute: no replica qualifies (%s); reads ≈%s over the network, est. %.2fs",
				excluded(t.Partitions[p].Replicas, byID, req), humanSize(bytes), remotes[0].cost)
		default:
			best, ok := byID[reps[0]]
			if ok && best.Caps.CPUScore > 0 && len(remotes) > 0 && remotes[0].rec.Caps.CPUScore > 0 {
				localCost := taskCost(bytes, best, true, false)
				remoteCost := taskCost(bytes, remotes[0].rec, false, false)
				if remoteCost*remoteAdvantage <= localCost {
					reason = fmt.Sprintf("data goes to compute: %s (CPU score %d) reading ≈%s over the network, est. %.2fs, beats replica %s (CPU score %d), est. %.2fs",
						remotes[0].rec.ID, remotes[0].rec.Caps.CPUScore, humanSize(bytes), remoteCost, best.ID, best.Caps.CPUScore, localCost)
					remotes = remotes[:1]
					break
				}
			}
			remotes = nil
		}
		for _, e := range remotes {
			if len(pt.cands) < 3 {
				pt.cands = append(pt.cands, e.rec.Node)
				pt.remote[e.rec.ID] = true
			}
		}
		for _, id := range reps {
			if nd, ok := t.Node(id); ok {
				pt.cands = append(pt.cands, nd)
			}
		}
		if len(pt.cands) == 0 {
			return nil, fmt.Errorf("%w: partition %d has no known node to run on", grid.ErrNoEligibleNodes, p)
		}
		pt.reason = reason
		load[pt.cands[0].ID]++
		out = append(out, pt)
	}
	return out, nil
}

func slicesFilter(in []string, keep func(string) bool) []string {
	out := in[:0]
	for _, s := range in {
		if keep(s) {
			out = append(out, s)
		}
	}
	return out
}

func humanSize(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

func (c *computeService) Explain(ctx context.Context, req *gridpb.SubmitRequest) (*gridpb.ExplainResponse, error) {
	if _, _, err := c.compile(ctx, req.Job); err != nil {
		return nil, err
	}
	plan, err := c.planJob(ctx, req.Job)
	if err != nil {
		return nil, err
	}
	resp := &gridpb.ExplainResponse{}
	perNode := map[string]int{}
	for _, pt := range plan {
		task := &gridpb.PlannedTask{Partition: uint32(pt.part), Node: pt.cands[0].ID, Reason: pt.reason}
		for _, f := range pt.cands[1:] {
			task.Fallbacks = append(task.Fallbacks, f.ID)
		}
		perNode[pt.cands[0].ID]++
		resp.Tasks = append(resp.Tasks, task)
	}
	ids := make([]string, 0, len(perNode))
	for id := range perNode {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	resp.Summary = fmt.Sprintf("%d tasks, one per partition, each run where a replica of its partition lives:", len(plan))
	for _, id := range ids {
		resp.Summary += fmt.Sprintf(" %s=%d", id, perNode[id])
	}
	return resp, nil
}

func (c *computeService) Submit(req *gridpb.SubmitRequest, stream gridpb.Compute_SubmitServer) error {
	ctx := stream.Context()
	prog, _, err := c.compile(ctx, req.Job)
	if err != nil {
		return err
	}
	plan, err := c.planJob(ctx, req.Job)
	if err != nil {
		return err
	}
	co := &coordinator{c: c, prog: prog, spec: req.Job, hedge: !req.NoHedge, send: stream.Send}
	res, err := co.run(ctx, plan)
	if err != nil {
		return err
	}
	c.s.n.metrics.jobDone(res)
	return stream.Send(&gridpb.JobEvent{Event: &gridpb.JobEvent_Result{Result: res}})
}

// runTaskOn runs a task on node nd: in-process when nd is this node.
func (c *computeService) runTaskOn(ctx context.Context, nd grid.Node, req *gridpb.TaskRequest) (*gridpb.TaskResult, error) {
	if nd.ID == c.s.n.cfg.ID {
		return c.runTask(ctx, req)
	}
	conn, err := c.s.n.conns.get(nd.Addr)
	if err != nil {
		return nil, err
	}
	res, err := gridpb.NewComputeClient(conn).RunTask(ctx, req, grpc.MaxCallRecvMsgSize(96<<20))
	return res, gridpb.FromStatus(err)
}

// coordinator runs one job's tasks. Its run loop is the only goroutine that
// touches task state; attempts run in goroutines it owns and report back on
// a channel.
type coordinator struct {
	c     *computeService
	prog  *query.Program
	spec  *gridpb.JobSpec
	hedge bool
	send  func(*gridpb.JobEvent) error

	merged  *query.Partial
	total   int
	done    int
	retries uint32
	hedges  uint32
	reports []*gridpb.TaskReport
	took    []time.Duration
}

type taskState struct {
	pt       plannedTask
	next     int // next candidate to try
	rounds   int
	done     bool
	running  map[int]context.CancelFunc // attempt number → cancel
	started  time.Time
	hedged   bool
	attempts int
}

type attemptOutcome struct {
	ts      *taskState
	attempt int
	node    grid.Node
	hedge   bool
	res     *gridpb.TaskResult
	err     error
}

const (
	// maxTaskRounds is how many times every replica of a partition may
	// fail before the job fails. The pauses between rounds grow by 100 ms,
	// so the rounds span about 4.5 s: enough to ride out an election or a
	// leadership transfer.
	maxTaskRounds   = 10
	hedgeMinElapsed = 150 * time.Millisecond
	hedgeFactor     = 4 // a task is a straggler after 4× the median finished task
)

func (co *coordinator) run(ctx context.Context, plan []plannedTask) (*gridpb.JobResult, error) {
	start := time.Now()
	co.total = len(plan)
	var wg sync.WaitGroup
	defer wg.Wait() // every attempt goroutine ends before run returns...
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ...once this (run first) has told them to stop
	outcomes := make(chan attemptOutcome)
	tasks := make([]*taskState, len(plan))
	for i, pt := range plan {
		tasks[i] = &taskState{pt: pt, running: map[int]context.CancelFunc{}}
	}
	launch := func(ts *taskState, hedge bool, delay time.Duration) {
		nd := ts.pt.cands[ts.next%len(ts.pt.cands)]
		ts.next++
		ts.attempts++
		n := ts.attempts
		if ts.started.IsZero() {
			ts.started = time.Now()
		}
		actx, acancel := context.WithCancel(ctx)
		ts.running[n] = acancel
		wg.Add(1)
		go func() {
			defer wg.Done()
			if delay > 0 {
				select {
				case <-time.After(delay):
				case <-actx.Done():
				}
			}
			var res *gridpb.TaskResult
			err := actx.Err()
			if err == nil {
				res, err = co.c.runTaskOn(actx, nd, &gridpb.TaskRequest{Job: co.spec, Partition: uint32(ts.pt.part), ReadRemote: ts.pt.remote[nd.ID]})
			}
			select {
			case outcomes <- attemptOutcome{ts: ts, attempt: n, node: nd, hedge: hedge, res: res, err: err}:
			case <-ctx.Done():
			}
		}()
	}
	// Bound in-flight tasks: a node runs a few tasks at once, not hundreds.
	nodes := map[string]bool{}
	for _, pt := range plan {
		for _, nd := range pt.cands {
			nodes[nd.ID] = true
		}
	}
	limit := max(4, 2*len(nodes))
	queue := tasks
	inflight := 0
	for inflight < limit && len(queue) > 0 {
		launch(queue[0], false, 0)
		queue, inflight = queue[1:], inflight+1
	}
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for co.done < len(tasks) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
			if co.hedge {
				co.hedgeStragglers(tasks, launch)
			}
		case o := <-outcomes:
			o.ts.running[o.attempt]() // release the attempt's context
			delete(o.ts.running, o.attempt)
			if o.ts.done {
				continue // the other copy of a hedged task already counted
			}
			if o.err == nil {
				if err := co.finish(o); err == nil {
					for _, c := range o.ts.running {
						c() // cancel the losing copy
					}
					inflight--
					for inflight < limit && len(queue) > 0 {
						launch(queue[0], false, 0)
						queue, inflight = queue[1:], inflight+1
					}
					continue
				} else {
					o.err = err
				}
			}
			if fatalJobErr(o.err) {
				return nil, o.err
			}
			if len(o.ts.running) > 0 {
				continue // another copy is still running
			}
			var nl *grid.NotLeaderError
			if errors.As(o.err, &nl) && nl.LeaderID != "" {
				for i, nd := range o.ts.pt.cands {
					if nd.ID == nl.LeaderID {
						o.ts.next = i
					}
				}
			}
			delay := time.Duration(0)
			if o.ts.next%len(o.ts.pt.cands) == 0 { // every replica tried once more
				o.ts.rounds++
				delay = min(time.Duration(o.ts.rounds)*100*time.Millisecond, time.Second) // an election may be under way
			}
			if o.ts.rounds >= maxTaskRounds {
				return nil, fmt.Errorf("node: partition %d: every replica failed %d times; last error: %w", o.ts.pt.part, maxTaskRounds, o.err)
			}
			co.retries++
			co.c.s.n.log.Info("job task failed; retrying elsewhere", "partition", o.ts.pt.part, "node", o.node.ID, "err", o.err)
			launch(o.ts, false, delay)
		}
	}
	final, err := co.prog.Finalize(ctx, co.merged)
	if err != nil {
		return nil, jobErr(err)
	}
	raw, err := final.JSON()
	if err != nil {
		return nil, fmt.Errorf("node: encode job result: %w", err)
	}
	sort.Slice(co.reports, func(i, j int) bool { return co.reports[i].Partition < co.reports[j].Partition })
	return &gridpb.JobResult{ResultJson: raw, Tasks: co.reports, Retries: co.retries, Hedges: co.hedges, DurationUs: time.Since(start).Microseconds()}, nil
}

// finish merges a task's partial exactly once and reports progress.
func (co *coordinator) finish(o attemptOutcome) error {
	part, err := query.UnmarshalPartial(o.res.Partial)
	if err != nil {
		return fmt.Errorf("node: partial from %s: %w", o.node.ID, err)
	}
	if co.merged == nil {
		co.merged = part
	} else if err := co.prog.Merge(co.merged, part); err != nil {
		return jobErr(err)
	}
	o.ts.done = true
	co.done++
	took := time.Since(o.ts.started)
	co.took = append(co.took, took)
	sent := int64(len(o.res.Partial))
	if o.node.ID == co.c.s.n.cfg.ID {
		sent = 0 // ran here: nothing crossed the network
	}
	reason := o.ts.pt.reason
	switch {
	case o.hedge:
		reason = "backup copy of a straggler (hedge)"
	case o.node.ID != o.ts.pt.cands[0].ID:
		reason = fmt.Sprintf("fallback replica after %d failed attempt(s)", o.attempt-1)
	}
	rep := &gridpb.TaskReport{Partition: uint32(o.ts.pt.part), Node: o.node.ID, Reason: reason, Entries: o.res.Entries,
		BytesRead: o.res.BytesRead, BytesSent: sent, DurationUs: o.res.DurationUs, Hedge: o.hedge, Attempt: uint32(o.attempt),
		BytesNetwork: o.res.BytesNetwork, ReadFrom: o.res.ReadFrom}
	co.reports = append(co.reports, rep)
	return co.send(&gridpb.JobEvent{Event: &gridpb.JobEvent_Progress{Progress: &gridpb.Progress{
		TasksTotal: uint32(co.total), TasksDone: uint32(co.done), Retries: co.retries, Hedges: co.hedges, Finished: rep,
	}}})
}

// hedgeStragglers starts a backup copy, on another replica, of each task
// that has run far longer than the tasks already finished.
func (co *coordinator) hedgeStragglers(tasks []*taskState, launch func(*taskState, bool, time.Duration)) {
	if len(co.took) == 0 || len(co.took)*2 < len(tasks) {
		return
	}
	sorted := append([]time.Duration(nil), co.took...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	threshold := max(hedgeMinElapsed, hedgeFactor*sorted[len(sorted)/2])
	for _, ts := range tasks {
		if ts.done || ts.hedged || len(ts.running) == 0 || len(ts.pt.cands) < 2 || time.Since(ts.started) < threshold {
			continue
		}
		ts.hedged = true
		co.hedges++
		co.c.s.n.log.Info("hedging straggler", "partition", ts.pt.part, "after", time.Since(ts.started))
		launch(ts, true, 0)
	}
}

// crcOf is the CRC32C a write carries, so a damaged log entry is caught
// at apply; a delete carries none.
func crcOf(value []byte, del bool) uint32 {
	if del {
		return 0
	}
	return replication.Checksum(value)
}

// maxApplyRaces bounds how often an entry processor re-runs because the key
// changed between its read and its conditional write.
const maxApplyRaces = 16

// Apply runs an entry processor at the key's leader: read the entry, run the
// function, commit the result as a compare-and-swap on the version read. A
// lost race re-runs the function on the new value. The CAS carries the
// caller's request id but records it only if it swapped, so a retry of an
// Apply that did commit returns the first result instead of running again.
func (c *computeService) Apply(ctx context.Context, req *gridpb.ApplyRequest) (*gridpb.ApplyResponse, error) {
	s := c.s
	h := req.Header
	g, err := s.writeTarget(ctx, h, req.Key)
	if err != nil {
		return nil, err
	}
	proc, err := query.CompileProcessor(req.Script, query.DefaultLimits())
	if err != nil {
		return nil, jobErr(err)
	}
	lock := &c.applyLocks[xxhash.Sum64(append([]byte(h.Map+"\x00"), req.Key...))%uint64(len(c.applyLocks))]
	lock.Lock()
	defer lock.Unlock()
	for race := 0; race < maxApplyRaces; race++ {
		cur, _, err := g.Get(ctx, h.Map, req.Key, true)
		exists := err == nil
		if err != nil && !errors.Is(err, grid.ErrNotFound) {
			return nil, err
		}
		newValue, del, err := proc.Apply(ctx, req.Key, cur.Value, exists, []byte(req.Args))
		if err != nil {
			return nil, jobErr(err)
		}
		if del && !exists {
			return &gridpb.ApplyResponse{Deleted: true}, nil
		}
		if !del {
			if err := s.n.cfg.Limits.CheckValue(newValue); err != nil {
				return nil, fmt.Errorf("%w: the processor returned: %w", grid.ErrJobFailed, err)
			}
		}
		res, err := s.propose(ctx, g, h, &gridpb.Command{Op: &gridpb.Command_Cas{Cas: &gridpb.CasOp{
			Map: h.Map, Key: req.Key, ExpectedVersion: cur.Version, Value: newValue, Delete: del, DedupOnlyIfSwapped: true,
			Crc: crcOf(newValue, del), KeepExpiry: !del,
		}}})
		if err != nil {
			return nil, err
		}
		if !res.Ok {
			continue // the key changed under us: run again on the new value
		}
		if del {
			return &gridpb.ApplyResponse{Deleted: true, Version: res.Version}, nil
		}
		// res may be the first outcome of a retried request: return what is
		// stored at that version, not what this run computed.
		now, _, err := g.Get(ctx, h.Map, req.Key, true)
		if err == nil && now.Version == res.Version {
			return &gridpb.ApplyResponse{Value: now.Value, Version: res.Version, Crc: now.CRC}, nil
		}
		return &gridpb.ApplyResponse{Version: res.Version}, nil
	}
	return nil, fmt.Errorf("%w: %d attempts", grid.ErrContended, maxApplyRaces)
}
