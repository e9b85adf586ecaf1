// Command bench drives a 3-node zerogrid cluster and a 3-node etcd cluster,
// both started on loopback, with the same key-value workload, and prints the
// results side by side as markdown: throughput and latency per operation and
// client count, CPU per operation, and the nodes' resident memory idle and
// holding many keys. BENCHMARKS.md records its output.
//
//	cd test/bench && go run . -duration 10s
//
// With -compute it runs the compute-vs-scan benchmark instead (zerogrid
// only): an aggregate job shipped to the data against pulling every record
// through Scan and aggregating at the client, over the same records, on
// plain and (-shaped) rate-limited loopback, in a private network
// namespace where it can count every byte.
//
//	cd test/bench && go run . -compute -records 1000000 -shaped
//
// With -commission it measures commissioning (issue 3): the time a joining
// node takes to reach its share of replicas, and the time from a node's
// death to every partition's full replica count. With -idle-scale it
// measures idle CPU and RSS per node as replicas per node grow.
//
//	cd test/bench && go run . -commission
//	cd test/bench && go run . -idle-scale
//
// It lives in its own module so that etcd's client never enters zerogrid's.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/zerogrid/zerogrid/node/localcluster"
	// Must stay imported: it lets etcd's and zerogrid's protobuf files,
	// both named kv.proto, register in one process.
)

type config struct {
	duration, warmup, idle, rssLimit time.Duration
	idleLong                         time.Duration
	clients                          []int
	ops                              []string
	skipEtcd                         bool
	failover                         int
	failoverPause                    bool // SIGSTOP the leader instead of SIGKILL
	keyspace                         uint64
	valueSize                        int
	loadClients                      int
	rssKeys                          uint64
	dir                              string
	keep                             bool
	etcdBin, zgBin, profile          string
	insecure                         bool   // zerogrid without TLS
	metrics                          bool   // zerogrid nodes serve /metrics, scraped every second
	cpuProfile                       string // a dir for each zerogrid node's CPU profile of each cell
	memoryLimitMB                    int    // zerogrid nodes each in a memory cgroup of this size
	nodeArgs                         string // more flags for every zerogrid node
	out                              string
	compute                          computeConfig
	chassis                          chassisConfig
	commission                       commissionConfig
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "measured time per (op, clients) cell")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured time at the start of each cell")
	clients := fs.String("clients", "1,16,64,256", "concurrent clients (goroutines sharing one client), comma-separated")
	ops := fs.String("ops", "put,get,stale-get", "operations, comma-separated: put, get (linearizable), stale-get")
	fs.BoolVar(&c.skipEtcd, "skip-etcd", false, "run zerogrid only")
	fs.IntVar(&c.failover, "failover", 0, "instead: SIGKILL a partition leader this many times and report how long puts and linearizable gets were unavailable (zerogrid, then etcd if found)")
	fs.BoolVar(&c.failoverPause, "failover-pause", false, "with -failover: SIGSTOP the leader instead (SIGCONT after the round), and give zerogrid's client 1 s attempts as etcd's get")
	fs.Uint64Var(&c.keyspace, "keyspace", 100_000, "keys the workload picks from uniformly; all are written before the cells run")
	fs.IntVar(&c.valueSize, "value-size", 256, "value size in bytes")
	fs.IntVar(&c.loadClients, "load-clients", 256, "concurrent writers for the preload and the RSS load")
	fs.DurationVar(&c.idle, "idle", 10*time.Second, "idle time before each RSS reading")
	fs.DurationVar(&c.idleLong, "idle-long", time.Minute, "total idle time of a second reading of the fresh cluster (0 skips it)")
	fs.Uint64Var(&c.rssKeys, "rss-keys", 1_000_000, "keys to hold for the loaded RSS reading (0 skips it)")
	fs.DurationVar(&c.rssLimit, "rss-limit", 10*time.Minute, "time limit per system for the RSS load; RSS is read at the count reached")
	fs.StringVar(&c.dir, "dir", "", "an empty dir for the clusters' data and logs, left in place (default: a new temp dir, removed at the end)")
	fs.BoolVar(&c.keep, "keep", false, "keep the temp dir with data and logs")
	fs.StringVar(&c.etcdBin, "etcd", "etcd", "etcd server binary")
	fs.StringVar(&c.profile, "profile", "default", "zerogrid node --profile")
	fs.BoolVar(&c.metrics, "metrics", false, "zerogrid nodes serve /metrics (--ops-listen), scraped every second while measured (the cost of metrics)")
	fs.StringVar(&c.nodeArgs, "node-args", "", "more flags for every zerogrid node, space-separated (e.g. \"--memory-limit-mb 150\")")
	fs.IntVar(&c.memoryLimitMB, "memory-limit-mb", 0, "hold each zerogrid node in a memory cgroup (v1, needs root) of this many MiB, as a container would")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write each zerogrid node's CPU profile of each cell's measured window to this dir (nodes get --ops-listen --ops-pprof)")
	fs.BoolVar(&c.insecure, "insecure", false, "run zerogrid without TLS (--insecure; by default nodes and the client use mutual TLS)")
	fs.StringVar(&c.zgBin, "zerogrid", "", "prebuilt zerogrid binary (default: build ./cmd/zerogrid)")
	fs.StringVar(&c.out, "out", "", "also write the markdown report to this file")
	c.compute.flags(fs)
	c.chassis.flags(fs)
	idleReplicas, idleProfiles := c.commission.flags(fs)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	errs := c.compute.validate()
	errs = append(errs, c.chassis.validate()...)
	errs = append(errs, c.commission.validate(*idleReplicas, *idleProfiles)...)
	for _, s := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("-clients: %q is not a positive number", s))
			continue
		}
		c.clients = append(c.clients, n)
	}
	for _, s := range strings.Split(*ops, ",") {
		switch s = strings.TrimSpace(s); s {
		case opPut, opGet, opStaleGet:
			c.ops = append(c.ops, s)
		default:
			errs = append(errs, fmt.Errorf("-ops: %q is not put, get or stale-get", s))
		}
	}
	switch c.profile {
	case "default", "small", "test":
	default:
		errs = append(errs, fmt.Errorf("-profile: %q is not default, small or test", c.profile))
	}
	if c.duration <= 0 {
		errs = append(errs, errors.New("-duration must be positive"))
	}
	if c.keyspace < 1 {
		errs = append(errs, errors.New("-keyspace must be at least 1"))
	}
	if c.valueSize < 1 {
		errs = append(errs, errors.New("-value-size must be at least 1"))
	}
	if c.loadClients < 1 {
		errs = append(errs, errors.New("-load-clients must be at least 1"))
	}
	return c, errors.Join(errs...)
}

// systemResult is everything measured on one system.
type systemResult struct {
	Name     string
	Idle     memReading
	IdleLong memReading // after cfg.idleLong; empty if skipped
	Preload  loadResult
	Cells    map[cellKey]cell
	Loaded   memReading
	LoadRun  loadResult
	LoadKeys uint64 // distinct keys held at the loaded reading
}

type cellKey struct {
	op      string
	clients int
}

// memReading is the server processes' memory after an idle period, and the
// CPU they used during it.
type memReading struct {
	Procs   []memStatus // per process
	IdleCPU float64     // cores, summed over processes
	Err     string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	logf := func(format string, a ...any) {
		fmt.Fprintf(stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
	}
	if cfg.compute.enabled {
		return runCompute(ctx, cfg, args, stdout, stderr, logf)
	}
	if cfg.failover > 0 {
		return runFailover(ctx, cfg, stdout, logf)
	}
	if cfg.chassis.nodes > 0 {
		return runChassis(ctx, cfg, stdout, logf)
	}
	if cfg.commission.enabled {
		cfg.skipEtcd = true
		return runCommission(ctx, cfg, stdout, logf)
	}
	if cfg.commission.idle {
		cfg.skipEtcd = true
		return runIdleScale(ctx, cfg, stdout, logf)
	}

	if cfg.dir == "" {
		if cfg.dir, err = os.MkdirTemp("", "zerogrid-bench-"); err != nil {
			return err
		}
		if !cfg.keep {
			defer os.RemoveAll(cfg.dir)
		}
	}
	logf("data and logs in %s", cfg.dir)
	env := describeMachine(cfg)

	zgBin := cfg.zgBin
	if zgBin == "" {
		zgBin = filepath.Join(cfg.dir, "zerogrid")
		logf("building zerogrid")
		if err := buildZerogrid(ctx, zgBin); err != nil {
			return err
		}
	}

	// One system at a time: an idle cluster is not free (zerogrid's burns a
	// noticeable share of a core), and it would be charged to the other.
	systems := []func(context.Context) (store, func(), error){
		func(ctx context.Context) (store, func(), error) {
			logf("starting zerogrid (3 nodes, 32 partitions, 3 replicas, profile %s)", cfg.profile)
			abs, err := filepath.Abs(zgBin)
			if err != nil {
				return nil, nil, err
			}
			z, err := startZerogridConfig(ctx, localcluster.Config{Binary: abs, Dir: filepath.Join(cfg.dir, "zerogrid-cluster"),
				Nodes: 3, Partitions: 32, Replicas: 3, Profile: cfg.profile, Insecure: cfg.insecure,
				Ops: cfg.metrics || cfg.cpuProfile != "", ExtraArgs: append(pprofArgs(cfg.cpuProfile), strings.Fields(cfg.nodeArgs)...)})
			if err != nil {
				return nil, nil, err
			}
			stop := z.Close
			if cfg.memoryLimitMB > 0 {
				cg, err := limitMemory(z.pids, int64(cfg.memoryLimitMB)<<20)
				if err != nil {
					z.Close()
					return nil, nil, err
				}
				stop = func() {
					logf("zerogrid memory cgroups (%d MiB each): %s", cfg.memoryLimitMB, cg.describe())
					z.Close()
					cg.remove()
				}
			}
			if !cfg.metrics {
				return z, stop, nil
			}
			stopScrape := z.scrapeEvery(ctx, time.Second)
			return z, func() { stopScrape(); stop() }, nil
		},
	}
	if !cfg.skipEtcd {
		systems = append(systems, func(ctx context.Context) (store, func(), error) {
			logf("starting etcd (3 members)")
			dir := filepath.Join(cfg.dir, "etcd-cluster")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, nil, err
			}
			e, err := startEtcd(ctx, cfg.etcdBin, dir)
			if err != nil {
				return nil, nil, err
			}
			return e, e.Close, nil
		})
	}
	var results []*systemResult
	for _, start := range systems {
		s, stop, err := start(ctx)
		if err != nil {
			return err
		}
		r, err := measure(ctx, cfg, s, logf)
		logf("%s: stopping", s.Name())
		stop()
		if err != nil {
			return err
		}
		results = append(results, r)
	}

	var b strings.Builder
	report(&b, cfg, env, results)
	fmt.Fprint(stdout, b.String())
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// measure runs everything on one freshly started system: idle memory, the
// preload, every (op, clients) cell, then the load for the loaded memory
// reading.
func measure(ctx context.Context, cfg config, s store, logf func(string, ...any)) (*systemResult, error) {
	res := &systemResult{Name: s.Name(), Cells: map[cellKey]cell{}}
	logf("%s: idle for %v", s.Name(), cfg.idle)
	res.Idle = measureIdle(ctx, s, cfg.idle)
	if cfg.idleLong > cfg.idle {
		// Garbage piles up between GCs, so RSS can go on growing while idle.
		logf("%s: idle for %v more", s.Name(), cfg.idleLong-cfg.idle)
		res.IdleLong = measureIdle(ctx, s, cfg.idleLong-cfg.idle)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	vals := newValues(1024, cfg.valueSize, 1)
	logf("%s: preloading %d keys with %d writers", s.Name(), cfg.keyspace, cfg.loadClients)
	res.Preload = load(ctx, s, 0, cfg.keyspace, cfg.loadClients, time.Hour, vals, nil)
	r := res.Preload
	logf("%s: preloaded %d keys in %v (%.0f/s, %d errors)", s.Name(), r.Written, r.Elapsed.Round(time.Millisecond),
		float64(r.Written)/r.Elapsed.Seconds(), r.Errors)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	for _, op := range cfg.ops {
		for _, n := range cfg.clients {
			stopProfile := startCellProfile(ctx, cfg, s, fmt.Sprintf("%s-%d", op, n), logf)
			c := runCell(ctx, s, op, n, cfg.warmup, cfg.duration, cfg.keyspace, vals)
			stopProfile()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			res.Cells[cellKey{op, n}] = c
			logf("%-8s %-9s %3d clients: %8.0f ops/s  p50 %-8s p99 %-8s errors %d  server CPU %.2f s, driver %.2f s",
				s.Name(), op, n, c.Rate(), fmtDur(c.P50), fmtDur(c.P99), c.Errors, c.ServerCPU, c.DriverCPU)
		}
	}

	if cfg.rssKeys > 0 {
		from := min(cfg.keyspace, cfg.rssKeys)
		logf("%s: loading keys %d..%d (limit %v)", s.Name(), from, cfg.rssKeys, cfg.rssLimit)
		start := time.Now()
		r := load(ctx, s, from, cfg.rssKeys, cfg.loadClients, cfg.rssLimit, vals, func(done uint64) {
			logf("%s: %d keys held, %.0f/s", s.Name(), from+done, float64(done)/time.Since(start).Seconds())
		})
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		res.LoadRun, res.LoadKeys = r, from+r.Written
		logf("%s: holds %d keys after %v (%.0f/s, %d errors); idle for %v", s.Name(), from+r.Written,
			r.Elapsed.Round(time.Second), float64(r.Written)/r.Elapsed.Seconds(), r.Errors, cfg.idle)
		res.Loaded = measureIdle(ctx, s, cfg.idle)
	}
	return res, nil
}

// measureIdle waits d, then reads the servers' RSS; it also reports the CPU
// they used meanwhile.
func measureIdle(ctx context.Context, s store, d time.Duration) memReading {
	before := sumTicks(s.PIDs())
	start := time.Now()
	sleepUntil(ctx, start.Add(d))
	var m memReading
	m.IdleCPU = float64(sumTicks(s.PIDs())-before) / clockTicks / time.Since(start).Seconds()
	for _, pid := range s.PIDs() {
		ms, err := readMem(pid)
		if err != nil {
			m.Err = err.Error()
		}
		m.Procs = append(m.Procs, ms)
	}
	return m
}

// environment describes where and what was measured.
type environment struct {
	Date, CPU, Kernel, Go, Etcd, Commit string
	NumCPU                              int
}

func describeMachine(cfg config) environment {
	e := environment{
		Date:   time.Now().UTC().Format("2006-01-02 15:04 MST"),
		CPU:    cpuModel(),
		NumCPU: runtime.NumCPU(),
		Go:     runtime.Version(),
		Etcd:   "not run",
	}
	if out, err := exec.Command("go", "version").Output(); err == nil {
		e.Go = strings.TrimSpace(strings.TrimPrefix(string(out), "go version "))
	}
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(raw))
	}
	if !cfg.skipEtcd {
		e.Etcd = etcdVersion(cfg.etcdBin)
	}
	if cfg.zgBin != "" {
		e.Commit = "prebuilt binary " + cfg.zgBin + "; driver and client at"
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		e.Commit = strings.TrimSpace(e.Commit + " " + strings.TrimSpace(string(out)))
		if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
			e.Commit += " (with uncommitted changes)"
		}
	}
	return e
}
