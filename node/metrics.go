package node

import (
	"net"
	"strconv"
	"sync/atomic"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// metrics is a node's Prometheus registry (its own, never the global
// one): every RPC its gRPC servers handle, by method and code, with a
// latency histogram (go-grpc-middleware's provider, so the usual
// dashboards read it), the bytes they move, a few counters kept where
// things happen (jobs, tasks, moves), the Go runtime and the process, and
// a collector that reads the node's state — Raft groups, the log store,
// integrity, the disk — only when scraped, so an idle node pays nothing
// for them.
type metrics struct {
	reg   *prometheus.Registry
	rpcs  *grpcprom.ServerMetrics
	bytes *wireBytes

	jobAttempts *prometheus.CounterVec // kind: retry, hedge, fallback
	tasksRun    *prometheus.CounterVec // outcome: ok, error
	movesBegun  prometheus.Counter
}

func newMetrics(n *Node) *metrics {
	m := &metrics{
		reg:   prometheus.NewRegistry(),
		rpcs:  newRPCMetrics(),
		bytes: &wireBytes{},
		jobAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "zerogrid_job_task_attempts_total",
			Help: "Extra task attempts of the jobs this node coordinated: retry (after a failure), hedge (a backup copy of a straggler), fallback (a task that finished on a replica other than its first choice)."},
			[]string{"kind"}),
		tasksRun: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "zerogrid_tasks_run_total",
			Help: "Job tasks this node ran over its replicas, by outcome."}, []string{"outcome"}),
		movesBegun: prometheus.NewCounter(prometheus.CounterOpts{Name: "zerogrid_replica_moves_started_total",
			Help: "Replica moves this node started while it led the metadata group."}),
	}
	// Every label value exists from the start, so that rates of counters
	// still at zero are defined.
	for _, kind := range []string{"retry", "hedge", "fallback"} {
		m.jobAttempts.WithLabelValues(kind)
	}
	for _, outcome := range []string{"ok", "error"} {
		m.tasksRun.WithLabelValues(outcome)
	}
	m.reg.MustRegister(m.rpcs, m.jobAttempts, m.tasksRun, m.movesBegun,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newNodeCollector(n, m.bytes))
	return m
}

// newRPCMetrics counts RPCs by method and code, with a latency histogram.
func newRPCMetrics() *grpcprom.ServerMetrics {
	return grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(
		[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10})))
}

// jobDone counts a finished job's extra attempts.
func (m *metrics) jobDone(res *gridpb.JobResult) {
	m.jobAttempts.WithLabelValues("retry").Add(float64(res.GetRetries()))
	m.jobAttempts.WithLabelValues("hedge").Add(float64(res.GetHedges()))
	fallback := 0
	for _, t := range res.GetTasks() {
		if t.GetAttempt() > 1 && !t.GetHedge() {
			fallback++
		}
	}
	m.jobAttempts.WithLabelValues("fallback").Add(float64(fallback))
}

// taskRun counts a task this node ran.
func (m *metrics) taskRun(err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.tasksRun.WithLabelValues(outcome).Inc()
}

// wireBytes counts the bytes the node's accepted connections read and
// write (TLS records and all: what crosses the wire). It wraps the
// listener rather than hooking gRPC's stats, which cost 5 µs a call.
type wireBytes struct{ in, out atomic.Uint64 }

func (w *wireBytes) listener(l net.Listener) net.Listener {
	return &countingListener{Listener: l, w: w}
}

type countingListener struct {
	net.Listener
	w *wireBytes
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, w: l.w}, nil
}

type countingConn struct {
	net.Conn
	w *wireBytes
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.w.in.Add(uint64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.w.out.Add(uint64(n))
	return n, err
}

// nodeCollector reads the node's state at scrape time.
type nodeCollector struct {
	n               *Node
	bytes           *wireBytes
	descInfo        *prometheus.Desc
	descTerm        *prometheus.Desc
	descLeader      *prometheus.Desc
	descCommit      *prometheus.Desc
	descApplied     *prometheus.Desc
	descLastLog     *prometheus.Desc
	descApplyLag    *prometheus.Desc
	descLogBytes    *prometheus.Desc
	descLogSegs     *prometheus.Desc
	descLogCommits  *prometheus.Desc
	descLogWrites   *prometheus.Desc
	descLogSync     *prometheus.Desc
	descHBReqs      *prometheus.Desc
	descHBMsgs      *prometheus.Desc
	descHBCommits   *prometheus.Desc
	descScrubs      *prometheus.Desc
	descCorrupt     *prometheus.Desc
	descQuarantines *prometheus.Desc
	descRebuilds    *prometheus.Desc
	descQuarantined *prometheus.Desc
	descDiskFree    *prometheus.Desc
	descDiskLow     *prometheus.Desc
	descBytesIn     *prometheus.Desc
	descBytesOut    *prometheus.Desc
}

func newNodeCollector(n *Node, bytes *wireBytes) *nodeCollector {
	c := &nodeCollector{n: n, bytes: bytes}
	c.descInfo = prometheus.NewDesc("zerogrid_node_info", "The node: 1, labelled with its id, version and whether it runs insecure.",
		[]string{"node", "version", "insecure"}, nil)
	c.descTerm = groupDesc("zerogrid_raft_term", "The Raft group's current term.")
	c.descLeader = groupDesc("zerogrid_raft_leader", "1 if this node leads the Raft group, else 0.")
	c.descCommit = groupDesc("zerogrid_raft_commit_index", "The Raft group's commit index as this node knows it.")
	c.descApplied = groupDesc("zerogrid_raft_applied_index", "The last log index this node's replica applied.")
	c.descLastLog = groupDesc("zerogrid_raft_last_log_index", "The last index in this node's log of the group.")
	c.descApplyLag = groupDesc("zerogrid_raft_apply_lag", "Committed entries this node's replica has not applied yet.")
	c.descLogBytes = prometheus.NewDesc("zerogrid_raft_log_bytes", "Size of the node's shared Raft log on disk.", nil, nil)
	c.descLogSegs = prometheus.NewDesc("zerogrid_raft_log_segments", "Segment files of the node's shared Raft log.", nil, nil)
	c.descLogCommits = prometheus.NewDesc("zerogrid_raft_log_commits_total", "Writes of the shared Raft log to disk, each one fdatasync.", nil, nil)
	c.descLogWrites = prometheus.NewDesc("zerogrid_raft_log_group_writes_total", "Groups' log writes those commits carried.", nil, nil)
	c.descLogSync = prometheus.NewDesc("zerogrid_raft_log_sync_seconds", "Duration of the shared Raft log's fdatasyncs.", nil, nil)
	c.descHBReqs = prometheus.NewDesc("zerogrid_raft_batched_requests_total",
		"Raft requests sent on the per-peer heartbeat streams (heartbeats and idle leaders' commit-index updates).", nil, nil)
	c.descHBMsgs = prometheus.NewDesc("zerogrid_raft_batched_messages_total", "Messages that carried them.", nil, nil)
	c.descHBCommits = prometheus.NewDesc("zerogrid_raft_batched_commit_updates_total", "Idle leaders' commit-index updates among them.", nil, nil)
	c.descScrubs = prometheus.NewDesc("zerogrid_scrub_passes_total", "Scrub passes completed over every local partition.", nil, nil)
	c.descCorrupt = prometheus.NewDesc("zerogrid_corrupt_entries_total",
		"Entries found failing their CRC32C (scrub, reads, digests, apply), by where: store or log.", []string{"where"}, nil)
	c.descQuarantines = prometheus.NewDesc("zerogrid_quarantines_total", "Replicas this node quarantined.", nil, nil)
	c.descRebuilds = prometheus.NewDesc("zerogrid_rebuilds_total", "Quarantined replicas rebuilt from a leader's snapshot.", nil, nil)
	c.descQuarantined = prometheus.NewDesc("zerogrid_quarantined_partitions", "Partitions quarantined on this node now.", nil, nil)
	c.descDiskFree = prometheus.NewDesc("zerogrid_disk_free_bytes", "Free space on the data directory's file system.", nil, nil)
	c.descDiskLow = prometheus.NewDesc("zerogrid_disk_low", "1 while the node refuses growing writes for want of space.", nil, nil)
	c.descBytesIn = prometheus.NewDesc("zerogrid_grpc_received_bytes_total", "Bytes the node's accepted connections read (on the wire: TLS records included).", nil, nil)
	c.descBytesOut = prometheus.NewDesc("zerogrid_grpc_sent_bytes_total", "Bytes the node's accepted connections wrote (on the wire: TLS records included).", nil, nil)
	return c
}

func groupDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, []string{"partition"}, nil)
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.descInfo, c.descTerm, c.descLeader, c.descCommit, c.descApplied, c.descLastLog, c.descApplyLag,
		c.descLogBytes, c.descLogSegs, c.descLogCommits, c.descLogWrites, c.descLogSync, c.descHBReqs, c.descHBMsgs, c.descHBCommits,
		c.descScrubs, c.descCorrupt, c.descQuarantines, c.descRebuilds, c.descQuarantined, c.descDiskFree, c.descDiskLow, c.descBytesIn, c.descBytesOut} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(c.descInfo, 1, n.cfg.ID, Version, strconv.FormatBool(n.cfg.Insecure))
	if h := n.suspects.Load(); h != nil { // the host, once it is open
		for _, g := range h.Groups() {
			st := g.Status()
			part := "meta"
			if st.Group != replication.MetaGroup {
				part = strconv.Itoa(int(st.Group))
			}
			leader := 0.0
			if st.LeaderID == n.cfg.ID {
				leader = 1
			}
			gauge(c.descTerm, float64(st.Term), part)
			gauge(c.descLeader, leader, part)
			gauge(c.descCommit, float64(st.CommitIndex), part)
			gauge(c.descApplied, float64(st.Applied), part)
			gauge(c.descLastLog, float64(st.LastLogIndex), part)
			gauge(c.descApplyLag, float64(st.CommitIndex-min(st.Applied, st.CommitIndex)), part)
		}
		ls := h.LogStats()
		gauge(c.descLogBytes, float64(ls.Bytes))
		gauge(c.descLogSegs, float64(ls.Segments))
		counter(c.descLogCommits, ls.Commits)
		counter(c.descLogWrites, ls.Writes)
		buckets, count := map[float64]uint64{}, uint64(0)
		for i, b := range ls.Syncs.Bounds {
			count += ls.Syncs.Counts[i]
			buckets[b.Seconds()] = count
		}
		ch <- prometheus.MustNewConstHistogram(c.descLogSync, count+ls.Syncs.Over, ls.Syncs.Sum.Seconds(), buckets)
	}
	if n.trans != nil {
		ts := n.trans.Stats()
		counter(c.descHBReqs, ts.BatchedRequests)
		counter(c.descHBMsgs, ts.BatchMessages)
		counter(c.descHBCommits, ts.BatchedCommitUpdates)
	}
	is := n.integrity.stats()
	counter(c.descScrubs, is.GetScrubPasses())
	counter(c.descCorrupt, is.GetCorruptEntries(), "store")
	counter(c.descCorrupt, is.GetCorruptLogEntries(), "log")
	counter(c.descQuarantines, is.GetQuarantines())
	counter(c.descRebuilds, is.GetRebuilds())
	gauge(c.descQuarantined, float64(len(is.GetQuarantined())))
	free, low := n.disk.status()
	gauge(c.descDiskFree, float64(free))
	lowV := 0.0
	if low != "" {
		lowV = 1
	}
	gauge(c.descDiskLow, lowV)
	counter(c.descBytesIn, c.bytes.in.Load())
	counter(c.descBytesOut, c.bytes.out.Load())
}
