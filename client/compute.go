package client

import (
	"bytes"
	"context"
	"encoding/json"

	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Job is work shipped to the nodes that hold a map's data: one task per
// partition, each run over a replica's local copy, partial results merged by
// a coordinating node. Set exactly one of Agg, Script and Func.
type Job struct {
	Map    string
	Prefix []byte
	// Filter is a Starlark expression over k (the key) and v (the value
	// decoded from JSON), e.g. `v.region == "eu"`.
	Filter string
	// Agg is a built-in aggregate: count, sum(EXPR), min(EXPR), max(EXPR),
	// avg(EXPR), distinct(EXPR), topk(K, EXPR), each optionally "... by EXPR".
	Agg string
	// Script is a Starlark program defining map(k, v) (calling emit(key,
	// value)), and optionally combine(key, values) and reduce(key, values).
	Script string
	// Func names a Go function registered in the node binary.
	Func string
	// Args is JSON handed to Script or Func as args.
	Args string
	// Stale runs each task on the least-loaded replica's local state instead
	// of the leader's linearizable view.
	Stale bool
	// Partitions restricts the job (nil: all).
	Partitions []int
	// NoHedge turns off backup copies of straggling tasks.
	NoHedge bool
	// Requires restricts which nodes may run the tasks (labels, arch, RAM,
	// CPU score). A partition with no qualifying replica is read over the
	// network by a qualifying node.
	Requires grid.Requirements
	// Limits per task; zero values take the node's defaults.
	Steps       uint64
	Deadline    time.Duration
	OutputBytes int64
	MemoryBytes uint64
}

func (j Job) spec() *gridpb.JobSpec {
	s := &gridpb.JobSpec{Map: j.Map, Prefix: j.Prefix, Filter: j.Filter, Agg: j.Agg, Script: j.Script, Func: j.Func, Args: j.Args,
		StepBudget: j.Steps, DeadlineMs: j.Deadline.Milliseconds(), OutputBytes: j.OutputBytes, MemoryBytes: j.MemoryBytes}
	if j.Stale {
		s.Consistency = gridpb.Consistency_STALE
	}
	for _, p := range j.Partitions {
		s.Partitions = append(s.Partitions, uint32(p))
	}
	if r := j.Requires; !r.Empty() {
		s.Requires = &gridpb.Requirements{Labels: r.Labels, Arch: r.Arch, MinRamBytes: r.MinRAM, MinCpuScore: r.MinCPUScore}
	}
	return s
}

// TaskReport says where a task ran and what it cost.
type TaskReport struct {
	Partition int
	Node      string
	Reason    string
	Entries   int64
	BytesRead int64 // read from the node's local store
	// BytesNetwork were read over the network from ReadFrom (a replica),
	// when the task ran on a node without a usable replica.
	BytesNetwork int64
	ReadFrom     string
	BytesSent    int64 // partial result sent over the network
	Duration     time.Duration
	Hedge        bool // the backup copy of a straggler won
	Attempt      int
}

// JobProgress is one progress event.
type JobProgress struct {
	Done, Total     int
	Retries, Hedges int
	Finished        TaskReport
}

// JobGroup is one row of a result: a group key and its value (int64,
// float64, string, bool, []any or map[string]any).
type JobGroup struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

// JobResult is a finished job.
type JobResult struct {
	Groups   []JobGroup
	Tasks    []TaskReport
	Retries  int
	Hedges   int
	Duration time.Duration
	// JSON is the result as the coordinator encoded it.
	JSON []byte
}

// JobEvent is either progress or the final result.
type JobEvent struct {
	Progress *JobProgress
	Result   *JobResult
}

// JobRun is a submitted job's event stream.
type JobRun struct {
	c        *Client
	ctx      context.Context
	req      *gridpb.SubmitRequest
	stream   gridpb.Compute_SubmitClient
	restarts int
	done     bool
}

// maxJobRestarts: a job is read-only, so when its coordinator node dies
// the whole job is safely submitted again elsewhere, this many times.
const maxJobRestarts = 3

// Submit starts a job; read its events with Next, or wait with Wait.
func (c *Client) Submit(ctx context.Context, job Job) (*JobRun, error) {
	if err := grid.ValidateMapName(job.Map); err != nil {
		return nil, err
	}
	r := &JobRun{c: c, ctx: ctx, req: &gridpb.SubmitRequest{Job: job.spec(), NoHedge: job.NoHedge}}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *JobRun) open() error {
	return r.c.run(r.ctx, "submit job", r.c.anyNode().stream(), false, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		// The stream lives as long as the caller's context, not the attempt's.
		s, err := gridpb.NewComputeClient(cc).Submit(r.ctx, r.req, append(opts, grpc.MaxCallRecvMsgSize(96<<20))...)
		if err != nil {
			return err
		}
		r.stream = s
		return nil
	})
}

// Next returns the next event; after the result it returns io.EOF.
func (r *JobRun) Next() (JobEvent, error) {
	if r.done {
		return JobEvent{}, io.EOF
	}
	for {
		ev, err := r.stream.Recv()
		if err == nil {
			return r.convert(ev)
		}
		if err == io.EOF {
			return JobEvent{}, fmt.Errorf("client: job stream ended without a result: %w", grid.ErrBadRequest)
		}
		err = gridpb.FromStatus(err)
		if v, _, _ := judge(err); v != tryOther || r.restarts >= maxJobRestarts || r.ctx.Err() != nil {
			return JobEvent{}, fmt.Errorf("client: job: %w", err)
		}
		r.restarts++
		if oerr := r.open(); oerr != nil {
			return JobEvent{}, fmt.Errorf("client: job resubmission after %v: %w", err, oerr)
		}
	}
}

func (r *JobRun) convert(ev *gridpb.JobEvent) (JobEvent, error) {
	if p := ev.GetProgress(); p != nil {
		return JobEvent{Progress: &JobProgress{Done: int(p.TasksDone), Total: int(p.TasksTotal), Retries: int(p.Retries),
			Hedges: int(p.Hedges), Finished: taskReport(p.Finished)}}, nil
	}
	res := ev.GetResult()
	if res == nil {
		return JobEvent{}, fmt.Errorf("client: empty job event: %w", grid.ErrBadRequest)
	}
	var body struct {
		Groups []JobGroup `json:"groups"`
	}
	dec := json.NewDecoder(bytes.NewReader(res.ResultJson))
	dec.UseNumber() // keep 64-bit integers exact
	if err := dec.Decode(&body); err != nil {
		return JobEvent{}, fmt.Errorf("client: decode job result: %w", err)
	}
	for i := range body.Groups {
		body.Groups[i].Value = fromJSONNumber(body.Groups[i].Value)
	}
	out := &JobResult{Groups: body.Groups, Retries: int(res.Retries), Hedges: int(res.Hedges),
		Duration: time.Duration(res.DurationUs) * time.Microsecond, JSON: res.ResultJson}
	for _, t := range res.Tasks {
		out.Tasks = append(out.Tasks, taskReport(t))
	}
	r.done = true
	return JobEvent{Result: out}, nil
}

// Wait drains progress events and returns the result.
func (r *JobRun) Wait() (*JobResult, error) {
	for {
		ev, err := r.Next()
		if err != nil {
			return nil, err
		}
		if ev.Result != nil {
			return ev.Result, nil
		}
	}
}

// Run submits a job and waits for its result.
func (c *Client) Run(ctx context.Context, job Job) (*JobResult, error) {
	r, err := c.Submit(ctx, job)
	if err != nil {
		return nil, err
	}
	return r.Wait()
}

// PlannedTask is one line of a job's plan.
type PlannedTask struct {
	Partition int
	Node      string
	Reason    string
	Fallbacks []string
}

// Explain returns where each task of the job would run, and why.
func (c *Client) Explain(ctx context.Context, job Job) ([]PlannedTask, string, error) {
	var out []PlannedTask
	var summary string
	err := c.runCluster(ctx, "explain job", false, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewComputeClient(cc).Explain(ctx, &gridpb.SubmitRequest{Job: job.spec()}, opts...)
		if err != nil {
			return err
		}
		out = out[:0]
		for _, t := range r.Tasks {
			out = append(out, PlannedTask{Partition: int(t.Partition), Node: t.Node, Reason: t.Reason, Fallbacks: t.Fallbacks})
		}
		summary = r.Summary
		return nil
	})
	return out, summary, err
}

// WriteResult writes each group of a result into map into (key = group
// key, value = the group's value as JSON) through ordinary replicated
// writes: map-style ETL. Groups are written one by one; on error the ones
// before it are written.
func (c *Client) WriteResult(ctx context.Context, into string, res *JobResult) (int, error) {
	m := c.Map(into)
	for i, g := range res.Groups {
		v, err := json.Marshal(g.Value)
		if err != nil {
			return i, fmt.Errorf("client: encode group %q: %w", g.Key, err)
		}
		key := g.Key
		if key == "" {
			key = "_"
		}
		if _, err := m.Put(ctx, []byte(key), v); err != nil {
			return i, err
		}
	}
	return len(res.Groups), nil
}

// Apply runs an entry processor atomically on one key at its partition
// leader: script defines process(key, value, args) returning the new value
// (JSON-able; a string is stored as is) or None to delete. It returns the
// stored value and version after the call.
func (m *Map) Apply(ctx context.Context, key []byte, script string, args string) (value []byte, version uint64, deleted bool, err error) {
	if err := m.checkKey(key); err != nil {
		return nil, 0, false, err
	}
	req := &gridpb.ApplyRequest{Header: m.header(), Key: key, Script: script, Args: args}
	err = m.c.run(ctx, "apply", m.c.newPicker(m.partition(key), true), true, func(ctx context.Context, cc *grpc.ClientConn, t target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewComputeClient(cc).Apply(ctx, req, opts...)
		if err != nil {
			return err
		}
		if len(r.GetValue()) > 0 {
			if err := verifyValue(m.name, key, r.GetValue(), r.GetCrc(), t.addr); err != nil {
				return err
			}
		}
		value, version, deleted = r.GetValue(), r.GetVersion(), r.GetDeleted()
		return nil
	})
	return value, version, deleted, err
}

func taskReport(t *gridpb.TaskReport) TaskReport {
	if t == nil {
		return TaskReport{}
	}
	return TaskReport{Partition: int(t.Partition), Node: t.Node, Reason: t.Reason, Entries: t.Entries, BytesRead: t.BytesRead,
		BytesSent: t.BytesSent, Duration: time.Duration(t.DurationUs) * time.Microsecond, Hedge: t.Hedge, Attempt: int(t.Attempt),
		BytesNetwork: t.BytesNetwork, ReadFrom: t.ReadFrom}
}

// fromJSONNumber turns json.Numbers into int64 (when integral) or float64.
func fromJSONNumber(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = fromJSONNumber(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = fromJSONNumber(x[k])
		}
	}
	return v
}
