package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// report writes the results as markdown.
func report(w io.Writer, cfg config, env environment, rs []*systemResult) {
	zg := rs[0]
	var et *systemResult
	if len(rs) > 1 {
		et = rs[1]
	}
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }

	p("Run %s on %d × %s, Linux %s, %s, etcd %s, zerogrid %s.\n", env.Date, env.NumCPU, env.CPU, env.Kernel, env.Go, env.Etcd, env.Commit)
	p("Workload: %d-byte keys drawn uniformly from %d (all written first), %d-byte random values, %v per cell after %v warm-up; "+
		"all goroutines of a system share one client. Clusters: 3 zerogrid nodes (32 partitions, 3 replicas, profile %s, %s) "+
		"and 3 etcd members (defaults: plain HTTP, no TLS), on loopback, one cluster at a time, each started fresh.\n\n",
		keySize, cfg.keyspace, cfg.valueSize, cfg.duration, cfg.warmup, cfg.profile, tlsMode(cfg.insecure)+metricsMode(cfg.metrics)+memoryMode(cfg.memoryLimitMB))

	p("| op | clients | zerogrid ops/s | p50 | p99 | etcd ops/s | p50 | p99 | zerogrid/etcd |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, op := range cfg.ops {
		for _, n := range cfg.clients {
			k := cellKey{op, n}
			z := zg.Cells[k]
			p("| %s | %d | %s | %s | %s |", op, n, fmtRate(z.Rate()), fmtDur(z.P50), fmtDur(z.P99))
			if et != nil {
				e := et.Cells[k]
				ratio := "–"
				if e.Rate() > 0 {
					ratio = fmt.Sprintf("%.2f×", z.Rate()/e.Rate())
				}
				p(" %s | %s | %s | %s |\n", fmtRate(e.Rate()), fmtDur(e.P50), fmtDur(e.P99), ratio)
			} else {
				p(" – | – | – | – |\n")
			}
		}
	}

	p("\nCPU per operation, in the measured window: *server* sums the three server processes, *client* is the driver " +
		"process (the client library's cost, with the benchmark loop's); " +
		"*other* is the CPU the rest of the machine used meanwhile, in cores (2 = both cores busy): the noise.\n\n")
	p("| op | clients | zerogrid server µs/op | client µs/op | other (cores) | etcd server µs/op | client µs/op | other (cores) |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, op := range cfg.ops {
		for _, n := range cfg.clients {
			k := cellKey{op, n}
			p("| %s | %d | %s |", op, n, cpuCols(zg.Cells[k]))
			if et != nil {
				p(" %s |\n", cpuCols(et.Cells[k]))
			} else {
				p(" – | – | – |\n")
			}
		}
	}

	var errLines []string
	for _, r := range rs {
		for _, op := range cfg.ops {
			for _, n := range cfg.clients {
				if c := r.Cells[cellKey{op, n}]; c.Errors > 0 {
					errLines = append(errLines, fmt.Sprintf("- %s %s × %d: %d errors (%.2f%% of ops), first: %s",
						r.Name, op, n, c.Errors, 100*float64(c.Errors)/float64(c.Errors+c.Ops), c.FirstErr))
				}
			}
		}
		if r.Preload.Errors > 0 {
			errLines = append(errLines, fmt.Sprintf("- %s preload: %d failed writes (retried), first: %s", r.Name, r.Preload.Errors, r.Preload.FirstErr))
		}
		if r.LoadRun.Errors > 0 {
			errLines = append(errLines, fmt.Sprintf("- %s RSS load: %d failed writes (retried), first: %s", r.Name, r.LoadRun.Errors, r.LoadRun.FirstErr))
		}
	}
	if len(errLines) > 0 {
		p("\nErrors (not counted in ops/s or latency):\n\n%s\n", strings.Join(errLines, "\n"))
	} else {
		p("\nNo operation failed.\n")
	}

	p("\nMemory of each server process, per node, in MiB, from /proc/PID/status: RSS is VmRSS, split into *anon* "+
		"(RssAnon: Go heap, stacks) and *file* (RssFile: pages of mapped files, such as bbolt and badger files, that "+
		"the kernel may drop under pressure); *peak* is VmHWM. Idle: fresh cluster, map created, every partition led, "+
		"then %v idle (and, on the second line, %v idle in all). Loaded: after writing keys with %d concurrent writers, "+
		"then %v idle. Idle CPU is over the last idle period before the reading.\n\n",
		cfg.idle, cfg.idleLong, cfg.loadClients, cfg.idle)
	p("| state | system | keys held | RSS per node | anon | file | peak | idle CPU (cores, 3 nodes) |\n")
	p("|---|---|---:|---|---|---|---|---:|\n")
	row := func(state string, r *systemResult, keys uint64, m memReading) {
		col := func(f func(memStatus) int64) string {
			if len(m.Procs) == 0 {
				return "–"
			}
			parts := make([]string, len(m.Procs))
			for i, ms := range m.Procs {
				parts[i] = fmt.Sprintf("%.0f", float64(f(ms))/(1<<20))
			}
			return strings.Join(parts, " / ")
		}
		p("| %s | %s | %d | %s | %s | %s | %s | %.3f |\n", state, r.Name, keys,
			col(func(m memStatus) int64 { return m.RSS }), col(func(m memStatus) int64 { return m.Anon }),
			col(func(m memStatus) int64 { return m.File }), col(func(m memStatus) int64 { return m.Peak }), m.IdleCPU)
	}
	for _, r := range rs {
		row(fmt.Sprintf("idle %v, fresh", cfg.idle), r, 0, r.Idle)
		if cfg.idleLong > cfg.idle {
			row(fmt.Sprintf("idle %v, fresh", cfg.idleLong), r, 0, r.IdleLong)
		}
	}
	if cfg.rssKeys > 0 {
		for _, r := range rs {
			row("loaded", r, r.LoadKeys, r.Loaded)
		}
	}
	p("\nWrite rates while loading (%d writers, one key per write, nothing batched by the client):\n\n", cfg.loadClients)
	for _, r := range rs {
		p("- %s: preload of %d keys at %s/s", r.Name, r.Preload.Written, fmtRate(float64(r.Preload.Written)/r.Preload.Elapsed.Seconds()))
		if cfg.rssKeys > 0 {
			l := r.LoadRun
			p("; RSS load of %d more keys in %v at %s/s", l.Written, l.Elapsed.Round(time.Second), fmtRate(float64(l.Written)/l.Elapsed.Seconds()))
			if l.TimedOut {
				p(" (stopped at the %v limit, short of %d keys)", cfg.rssLimit, cfg.rssKeys)
			}
		}
		p(".\n")
	}
	for _, r := range rs {
		for _, m := range []memReading{r.Idle, r.IdleLong, r.Loaded} {
			if m.Err != "" {
				p("\n%s: reading memory failed: %s\n", r.Name, m.Err)
			}
		}
	}
}

func cpuCols(c cell) string {
	if c.Ops == 0 {
		return "– | – | –"
	}
	us := func(sec float64) string { return fmt.Sprintf("%.0f", sec*1e6/float64(c.Ops)) }
	other := (c.MachineCPU - c.ServerCPU - c.DriverCPU) / c.Window.Seconds()
	return fmt.Sprintf("%s | %s | %.2f", us(c.ServerCPU), us(c.DriverCPU), max(0, other))
}

func fmtRate(r float64) string {
	if r == 0 {
		return "0"
	}
	return fmt.Sprintf("%.0f", r)
}

// fmtDur prints a latency in milliseconds with three significant digits.
func fmtDur(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case d == 0:
		return "–"
	case ms < 1:
		return fmt.Sprintf("%.3f ms", ms)
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1f ms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.0f ms", ms)
	}
	return fmt.Sprintf("%.2f s", ms/1000)
}

// memoryMode names the nodes' memory cgroup, if any.
func memoryMode(mb int) string {
	if mb > 0 {
		return fmt.Sprintf(", each node in a %d MiB memory cgroup", mb)
	}
	return ""
}

// metricsMode names whether the nodes served /metrics.
func metricsMode(on bool) string {
	if on {
		return ", /metrics served and scraped every second"
	}
	return ""
}

// tlsMode names how zerogrid's connections ran.
func tlsMode(insecure bool) string {
	if insecure {
		return "no TLS (--insecure)"
	}
	return "mutual TLS"
}
