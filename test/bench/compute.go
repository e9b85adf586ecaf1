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
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/client"
)

// computeConfig is the compute-vs-scan benchmark's part of the flags.
type computeConfig struct {
	enabled     bool
	records     uint64
	recordBytes int
	shops       int
	seed        uint64
	batchOps    int
	batchBytes  int
	inflight    int
	loadLimit   time.Duration
	runs        int
	scanPage    int
	baseline    time.Duration
	shaped      bool
	netns       bool
	shapeRate   string
	shapeDelay  time.Duration
}

// maxTxnWrites is the most writes a node accepts in one transaction.
const maxTxnWrites = 128

func (c *computeConfig) flags(fs *flag.FlagSet) {
	fs.BoolVar(&c.enabled, "compute", false, "run the compute-vs-scan benchmark instead (zerogrid only; see the -records ... -shaped flags)")
	fs.Uint64Var(&c.records, "records", 1_000_000, "compute: records to load")
	fs.IntVar(&c.recordBytes, "record-bytes", 100, fmt.Sprintf("compute: bytes per JSON value (at least %d)", minRecordBytes))
	fs.IntVar(&c.shops, "shops", 100, "compute: distinct shops (the groups of the aggregate)")
	fs.Uint64Var(&c.seed, "seed", 1, "compute: seed of the generated records")
	fs.IntVar(&c.batchOps, "batch", maxTxnWrites, fmt.Sprintf("compute: puts per load transaction (1..%d, the node's limit)", maxTxnWrites))
	fs.IntVar(&c.batchBytes, "batch-bytes", 64<<10, "compute: bytes of keys and values per load transaction, at most")
	fs.IntVar(&c.inflight, "inflight", 32, "compute: load transactions in flight")
	fs.DurationVar(&c.loadLimit, "load-limit", 30*time.Minute, "compute: stop loading after this long and measure what was loaded")
	fs.IntVar(&c.runs, "runs", 3, "compute: measured runs of each method per link, after one warm-up run")
	fs.IntVar(&c.scanPage, "scan-page", 1000, "compute: entries per Scan page (the client's default is 100)")
	fs.DurationVar(&c.baseline, "baseline", 5*time.Second, "compute: idle time over which the cluster's background traffic is measured per link")
	fs.BoolVar(&c.shaped, "shaped", false, "compute: also measure with loopback shaped to -shape-rate and -shape-delay")
	fs.BoolVar(&c.netns, "netns", true, "compute: run in a private network namespace (needs root): exact loopback byte counts, and shaping touches nobody else")
	fs.StringVar(&c.shapeRate, "shape-rate", "100mbit", "compute: rate of the shaped link (tc syntax)")
	fs.DurationVar(&c.shapeDelay, "shape-delay", 500*time.Microsecond, "compute: one-way delay of the shaped link")
}

func (c *computeConfig) validate() []error {
	if !c.enabled {
		return nil
	}
	var errs []error
	if c.records < 1 {
		errs = append(errs, errors.New("-records must be at least 1"))
	}
	if c.recordBytes < minRecordBytes {
		errs = append(errs, fmt.Errorf("-record-bytes must be at least %d", minRecordBytes))
	}
	if c.shops < 1 || c.shops > 100_000 {
		errs = append(errs, errors.New("-shops must be in 1..100000"))
	}
	if c.batchOps < 1 || c.batchOps > maxTxnWrites {
		errs = append(errs, fmt.Errorf("-batch must be in 1..%d", maxTxnWrites))
	}
	if c.batchBytes < 1 {
		errs = append(errs, errors.New("-batch-bytes must be positive"))
	}
	if c.inflight < 1 {
		errs = append(errs, errors.New("-inflight must be at least 1"))
	}
	if c.runs < 1 {
		errs = append(errs, errors.New("-runs must be at least 1"))
	}
	if c.scanPage < 1 {
		errs = append(errs, errors.New("-scan-page must be at least 1"))
	}
	if c.loadLimit <= 0 {
		errs = append(errs, errors.New("-load-limit must be positive"))
	}
	if c.shapeDelay < 0 {
		errs = append(errs, errors.New("-shape-delay must not be negative"))
	}
	return errs
}

// builtBinEnv tells the copy of the driver in the namespace that its
// -zerogrid binary was built from this tree by the outer copy.
const builtBinEnv = "ZEROGRID_BENCH_BUILT_BIN"

// sample is what one run of one method cost.
type sample struct {
	Wall   time.Duration
	Client wireCount // bytes through the client's sockets
	// Lo is every byte through loopback in the namespace (client and
	// node-to-node, headers included); -1 when not isolated.
	Lo    int64
	Drops int64 // packets the shaping qdisc dropped
	// CPU seconds: the three nodes, the driver, the whole machine.
	ServerCPU, DriverCPU, MachineCPU float64
}

// jobInfo is what a job's result says about its tasks.
type jobInfo struct {
	Tasks            int
	ByNode           map[string]int
	Entries          int64
	BytesRead        int64 // from the nodes' local stores
	BytesSent        int64 // partial results sent to the coordinator
	Retries, Hedges  int
	CoordinatorTime  time.Duration
	ReasonsSeen      []string
	GroupsInResult   int
	ResultJSONLength int
}

// phaseResult is one link's measurements.
type phaseResult struct {
	Name       string
	Shape      shaping
	Background float64 // loopback bytes/s while idle; -1 when not isolated
	Job, Scan  []sample
	JobInfo    jobInfo
	ScanSeen   uint64
}

type computeResult struct {
	Partitions int
	Load       bulkResult
	Phases     []phaseResult
}

func runCompute(ctx context.Context, cfg config, args []string, stdout, stderr io.Writer, logf func(string, ...any)) error {
	cc := cfg.compute
	if cc.netns && !inOwnNetns() {
		var env []string
		if cfg.zgBin == "" {
			dir, err := os.MkdirTemp("", "zerogrid-bench-bin-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			bin := filepath.Join(dir, "zerogrid")
			logf("building zerogrid")
			if err := buildZerogrid(ctx, bin); err != nil {
				return err
			}
			args = append([]string{"-zerogrid", bin}, args...)
			env = append(env, builtBinEnv+"="+bin)
		}
		logf("running the benchmark in a new network namespace")
		return runInNetns(ctx, args, env, stdout, stderr)
	}

	own := inOwnNetns()
	if own {
		if err := loUp(ctx); err != nil {
			return err
		}
	}
	descCfg := cfg
	descCfg.skipEtcd = true
	if cfg.zgBin != "" && cfg.zgBin == os.Getenv(builtBinEnv) {
		descCfg.zgBin = "" // built from this tree
	}
	env := describeMachine(descCfg)

	var err error
	if cfg.dir == "" {
		if cfg.dir, err = os.MkdirTemp("", "zerogrid-bench-"); err != nil {
			return err
		}
		if !cfg.keep {
			defer os.RemoveAll(cfg.dir)
		}
	}
	logf("data and logs in %s", cfg.dir)
	bin := cfg.zgBin
	if bin == "" {
		bin = filepath.Join(cfg.dir, "zerogrid")
		logf("building zerogrid")
		if err := buildZerogrid(ctx, bin); err != nil {
			return err
		}
	}
	logf("starting zerogrid (3 nodes, 32 partitions, 3 replicas, profile %s)", cfg.profile)
	z, err := startZerogrid(ctx, bin, filepath.Join(cfg.dir, "zerogrid-cluster"), cfg.profile, cfg.insecure)
	if err != nil {
		return err
	}
	defer func() {
		logf("stopping zerogrid")
		z.Close()
	}()
	t, err := z.client.Table(ctx)
	if err != nil {
		return err
	}
	res := computeResult{Partitions: len(t.Partitions)}

	gen := recordGen{seed: cc.seed, size: cc.recordBytes, shops: cc.shops}
	logf("loading %d records of %d bytes: up to %d puts (%d bytes) per transaction, %d in flight",
		cc.records, cc.recordBytes, cc.batchOps, cc.batchBytes, cc.inflight)
	start := time.Now()
	res.Load, err = bulkLoad(ctx, z.m, res.Partitions, gen, cc.records, cc.batchOps, cc.batchBytes, cc.inflight, cc.loadLimit,
		func(done uint64) {
			logf("loaded %d records, %.0f/s", done, float64(done)/time.Since(start).Seconds())
		})
	l := res.Load
	logf("loaded %d records in %v (%.0f records/s, %.0f transactions/s, %d failed attempts)", l.Records,
		l.Elapsed.Round(time.Millisecond), float64(l.Records)/l.Elapsed.Seconds(), float64(l.Txns)/l.Elapsed.Seconds(), l.Errors)
	if err != nil {
		return err
	}
	if l.Records == 0 {
		return errors.New("no record was loaded")
	}

	phases := []bool{false}
	if cc.shaped {
		phases = append(phases, true)
	}
	for _, shaped := range phases {
		p, err := measureLink(ctx, cc, z, own, shaped, l.Truth, logf)
		if err != nil {
			return err
		}
		res.Phases = append(res.Phases, p)
	}

	var b strings.Builder
	computeReport(&b, cfg, env, own, res)
	fmt.Fprint(stdout, b.String())
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// measureLink runs one warm-up and cc.runs measured runs of each method,
// alternating, on plain or shaped loopback, through a client of its own.
// Every run's result is checked against the generated data; a difference
// is an error that ends the benchmark.
func measureLink(ctx context.Context, cc computeConfig, z *zgStore, own, shaped bool, truth *aggregate,
	logf func(string, ...any)) (res phaseResult, err error) {
	res.Name = "loopback"
	if shaped {
		res.Name = "shaped loopback"
		s, undo, err := shapeLo(ctx, cc.shapeRate, cc.shapeDelay, own)
		if err != nil {
			return res, err
		}
		// Removed on every way out, Ctrl-C included (it cancels ctx, and
		// the error unwinds through here).
		defer func() {
			if uerr := undo(); uerr != nil {
				logf("WARNING: %v", uerr)
				err = errors.Join(err, uerr)
			} else {
				logf("loopback shaping removed")
			}
		}()
		res.Shape = s
		logf("loopback shaped: %s; client delay added by the driver: %v", s.Qdisc, s.ClientDelay)
	}

	res.Background = -1
	if own {
		logf("%s: measuring background traffic for %v", res.Name, cc.baseline)
		b0, err := loBytes()
		if err != nil {
			return res, err
		}
		t0 := time.Now()
		if sleepUntil(ctx, t0.Add(cc.baseline)); ctx.Err() != nil {
			return res, ctx.Err()
		}
		b1, err := loBytes()
		if err != nil {
			return res, err
		}
		res.Background = float64(b1-b0) / time.Since(t0).Seconds()
	}

	w := &wire{delay: res.Shape.ClientDelay}
	c, err := client.DialWith(ctx, z.cluster.Addrs(), client.WithTLSDir(z.cluster.ClientTLSDir()), client.WithDialOptions(grpc.WithContextDialer(w.dial)),
		client.WithScanPageSize(cc.scanPage))
	if err != nil {
		return res, err
	}
	defer c.Close()
	m := c.Map(benchMap)
	job := client.Job{Map: benchMap, Filter: aggFilter, Agg: aggExpr}

	var jobSums, scanSums map[string]int64
	runJob := func() error {
		r, err := c.Run(ctx, job)
		if err != nil {
			return fmt.Errorf("job: %w", err)
		}
		if jobSums, err = groupsToSums(r.Groups); err != nil {
			return fmt.Errorf("job result: %w", err)
		}
		if d := diffSums("loaded data", truth.sums, "job", jobSums); len(d) > 0 {
			return errMismatch("job vs the loaded data", d)
		}
		res.JobInfo = describeJob(r)
		return nil
	}
	runScan := func() error {
		agg := newAggregate()
		if err := m.Scan(ctx, nil, func(e client.Entry) error { return agg.addJSON(e.Value) }); err != nil {
			return fmt.Errorf("scan: %w", err)
		}
		if agg.records != truth.records {
			return fmt.Errorf("RESULTS DIFFER: the scan saw %d records, %d were loaded", agg.records, truth.records)
		}
		if d := diffSums("loaded data", truth.sums, "scan", agg.sums); len(d) > 0 {
			return errMismatch("scan vs the loaded data", d)
		}
		scanSums, res.ScanSeen = agg.sums, agg.records
		return nil
	}

	for run := 0; run <= cc.runs; run++ {
		label := fmt.Sprintf("run %d/%d", run, cc.runs)
		if run == 0 {
			label = "warm-up"
		}
		js, err := sampleRun(ctx, z, w, own, runJob)
		if err != nil {
			return res, err
		}
		ss, err := sampleRun(ctx, z, w, own, runScan)
		if err != nil {
			return res, err
		}
		if d := diffSums("job", jobSums, "scan", scanSums); len(d) > 0 {
			return res, errMismatch("job vs scan", d)
		}
		logf("%s %s: job %v, %d client bytes, %s loopback bytes | scan %v, %d client bytes, %s loopback bytes | results equal",
			res.Name, label, js.Wall.Round(time.Millisecond), js.Client.Total(), fmtLo(js.Lo),
			ss.Wall.Round(time.Millisecond), ss.Client.Total(), fmtLo(ss.Lo))
		if run > 0 {
			res.Job, res.Scan = append(res.Job, js), append(res.Scan, ss)
		}
	}
	return res, nil
}

// sampleRun times fn and counts the bytes and CPU it cost.
func sampleRun(ctx context.Context, z *zgStore, w *wire, own bool, fn func() error) (sample, error) {
	s := sample{Lo: -1}
	var lo0 int64
	if own {
		var err error
		if lo0, err = loBytes(); err != nil {
			return s, err
		}
	}
	d0, _ := qdiscDrops(ctx)
	w0 := w.count()
	srv0, drv0 := sumTicks(z.PIDs()), selfTicks()
	busy0, _ := machineTicks()
	t0 := time.Now()
	err := fn()
	s.Wall = time.Since(t0)
	srv1, drv1 := sumTicks(z.PIDs()), selfTicks()
	busy1, _ := machineTicks()
	s.Client = w.count().minus(w0)
	d1, _ := qdiscDrops(ctx)
	s.Drops = d1 - d0
	if own {
		lo1, lerr := loBytes()
		if lerr != nil {
			return s, lerr
		}
		s.Lo = lo1 - lo0
	}
	s.ServerCPU = float64(srv1-srv0) / clockTicks
	s.DriverCPU = float64(drv1-drv0) / clockTicks
	s.MachineCPU = float64(busy1-busy0) / clockTicks
	return s, err
}

func describeJob(r *client.JobResult) jobInfo {
	j := jobInfo{Tasks: len(r.Tasks), ByNode: map[string]int{}, Retries: r.Retries, Hedges: r.Hedges,
		CoordinatorTime: r.Duration, GroupsInResult: len(r.Groups), ResultJSONLength: len(r.JSON)}
	for _, t := range r.Tasks {
		j.ByNode[t.Node]++
		j.Entries += t.Entries
		j.BytesRead += t.BytesRead
		j.BytesSent += t.BytesSent
		if !slices.Contains(j.ReasonsSeen, t.Reason) {
			j.ReasonsSeen = append(j.ReasonsSeen, t.Reason)
		}
	}
	return j
}

func fmtLo(n int64) string {
	if n < 0 {
		return "n/a"
	}
	return fmt.Sprint(n)
}
