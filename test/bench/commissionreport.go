package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// moveStages splits the moves that created a replica into three stages,
// summed over the moves whose replica was seen open and caught up: wait
// (the move is in the table until the learner's group opens on its node:
// the reconciler's next tick adds it), copy (open until its applied index
// reaches the other replicas': the data transfer, by log or snapshot) and
// finish (caught up until the move leaves the table: promotion, removal of
// the replaced replica, on later ticks).
func moveStages(spans []moveSpan, cus map[copyKey]catchUp) (wait, cp, finish time.Duration, n int) {
	for _, s := range spans {
		if s.Add == "" || s.End == 0 {
			continue
		}
		c, ok := cus[copyKey{s.Add, s.Partition}]
		if !ok || c.Opened == 0 || c.CaughtUp == 0 {
			continue
		}
		// The replica may have opened before the poll that saw the move.
		opened := max(c.Opened, s.Start)
		caught := min(max(c.CaughtUp, opened), s.End)
		wait += opened - s.Start
		cp += caught - opened
		finish += s.End - caught
		n++
	}
	return wait, cp, finish, n
}

// durStats is the median and the largest of ds.
func durStats(ds []time.Duration) (median, most time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)-1]
}

func spanLengths(spans []moveSpan) []time.Duration {
	var out []time.Duration
	for _, s := range spans {
		if s.End > 0 {
			out = append(out, s.End-s.Start)
		}
	}
	return out
}

// commissionReport writes the commissioning results as markdown.
func commissionReport(w io.Writer, cfg config, env environment, runs []commissionRun) {
	cc := cfg.commission
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	keyBytes := len(recordGen{}.key(0))
	p("Run %s on %d × %s, Linux %s, %s, zerogrid %s.\n", env.Date, env.NumCPU, env.CPU, env.Kernel, env.Go, env.Commit)
	p("Cluster: 3 nodes of real processes (%d partitions, 3 replicas, profile %s, `--dead-after %v`), %d keys of %d bytes "+
		"(%d-byte keys, %d-byte values) loaded by transactions of up to %d puts, 32 in flight; then a 4th node joins, and "+
		"once it holds its share a founder that does not lead the metadata group is killed with SIGKILL. The driver reads the "+
		"table, the node list and every node's status every %v; times are from the join call (which returns once the new "+
		"process listens) or from the kill, to the first poll that saw the state.\n\n",
		cc.partitions, cfg.profile, cc.deadAfter, cc.keys, keyBytes+cc.valueBytes, keyBytes, cc.valueBytes, maxTxnWrites, cc.poll)

	p("**Join** (keys/s: keys copied to new replicas ÷ the time from the join to settled; *settled*: no move in flight and none planned):\n\n")
	p("| run | load avg | loaded at | listening | active | first move | settled | replicas held (fair share) | moves | keys copied | keys/s | MB/s | cluster CPU (cores) | other (cores) |\n")
	p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, r := range runs {
		j := r.Join
		p("| %d | %s | %.0f keys/s | %s | %s | %s | **%s** | %d (%.1f) | %d | %d | **%.0f** | %.2f | %.2f | %.2f |\n", i+1, j.LoadAvg,
			perSecond(r.Load.Records, r.Load.Elapsed), fmtDur(j.Listening), fmtDur(j.StateAt), fmtDur(j.FirstMove), fmtDur(j.Settled),
			r.NewShare, r.NewFair, len(j.Moves), j.KeysCopied, perSecond(j.KeysCopied, j.Settled),
			perSecond(j.KeysCopied*uint64(keyBytes+cc.valueBytes), j.Settled)/1e6, j.ClusterCPU, j.OtherCPU)
	}
	p("\nWhere a join's time goes, summed over its moves: *wait* (move in the table → the learner's group open on the new node), " +
		"*copy* (open → its applied index equals the other replicas': the data transfer), *finish* (caught up → the move leaves " +
		"the table: promotion and removal of the replaced replica). *snapshots*: partitions the new node holds a Raft snapshot of " +
		"(received from the leader, as opposed to catching up by replaying the log).\n\n")
	p("| run | moves timed | move median (max) | wait | copy | finish | copy rate (keys/s while copying) | snapshots |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, r := range runs {
		stagesRow(p, i+1, r.Join, r.KeysPer, fmt.Sprint(r.SnapOnNew))
	}

	p("\n**Death** (the victim silent for `--dead-after` is declared dead by the metadata leader on its next tick; then its " +
		"replicas are re-created on the survivors):\n\n")
	p("| run | load avg | killed | kill → declared dead | dead → full replica count | kill → full replica count | moves | keys copied | keys/s after declared dead | cluster CPU (cores) | other (cores) |\n")
	p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, r := range runs {
		d := r.Death
		p("| %d | %s | %s | %s | **%s** | %s | %d | %d | %.0f | %.2f | %.2f |\n", i+1, d.LoadAvg, r.Victim, fmtDur(d.StateAt),
			fmtDur(d.Settled-d.StateAt), fmtDur(d.Settled), len(d.Moves), d.KeysCopied, perSecond(d.KeysCopied, d.Settled-d.StateAt),
			d.ClusterCPU, d.OtherCPU)
	}
	p("\n| run | moves timed | move median (max) | wait | copy | finish | copy rate (keys/s while copying) |\n")
	p("|---|---:|---:|---:|---:|---:|---:|\n")
	for i, r := range runs {
		stagesRow(p, i+1, r.Death, r.KeysPer, "")
	}
}

func stagesRow(p func(string, ...any), run int, ph phaseTimes, keysPer []uint64, extra string) {
	med, most := durStats(spanLengths(ph.Moves))
	wait, cp, finish, n := moveStages(ph.Moves, ph.CatchUps)
	var copied uint64
	for _, s := range ph.Moves {
		if c, ok := ph.CatchUps[copyKey{s.Add, s.Partition}]; ok && s.Add != "" && c.CaughtUp != 0 && s.End != 0 {
			copied += keysPer[s.Partition]
		}
	}
	p("| %d | %d of %d | %s (%s) | %s | %s | %s | %.0f |", run, n, len(ph.Moves), fmtDur(med), fmtDur(most),
		fmtDur(wait), fmtDur(cp), fmtDur(finish), perSecond(copied, cp))
	if extra != "" {
		p(" %s |", extra)
	}
	p("\n")
}

// idleScaleReport writes the idle-cost results as markdown.
func idleScaleReport(w io.Writer, cfg config, env environment, cells []idleCell, samples []idleSample) {
	cc := cfg.commission
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("Run %s on %d × %s, Linux %s, %s, zerogrid %s.\n", env.Date, env.NumCPU, env.CPU, env.Kernel, env.Go, env.Commit)
	p("Each cell: a fresh idle cluster of 3 real node processes with 3 replicas per partition, so every node holds every "+
		"partition (replicas per node = partitions) plus the metadata group; one map, no data. After every partition has a "+
		"leader and %v more, CPU (utime+stime from /proc/PID/stat) over a %v window, then RSS (VmRSS; anon = RssAnon, "+
		"file = RssFile). %d run(s), going round all the cells in turn. *other* is the CPU the rest of the machine "+
		"used in the window, in cores (the machine's noise); *load avg* is /proc/loadavg at the window's start.\n\n",
		cc.idleSettle, cc.idleWindow, cc.idleRuns)
	p("| profile | replicas per node | CPU per node, mean of 3 (cores), by run | RSS per node, mean of 3 (MiB), by run | anon (MiB) | µs of CPU per replica per second |\n")
	p("|---|---:|---:|---:|---:|---:|\n")
	for _, c := range cells {
		var cpus, rss, anon []string
		var perRep []float64
		for _, s := range samples {
			if s.Cell != c {
				continue
			}
			cpu := mean(s.CPU)
			cpus = append(cpus, fmt.Sprintf("%.3f", cpu))
			rss = append(rss, fmt.Sprintf("%.0f", meanMem(s.Mem, func(m memStatus) int64 { return m.RSS })))
			anon = append(anon, fmt.Sprintf("%.0f", meanMem(s.Mem, func(m memStatus) int64 { return m.Anon })))
			perRep = append(perRep, cpu*1e6/float64(c.Replicas+1))
		}
		p("| %s | %d | %s | %s | %s | %s |\n", c.Profile, c.Replicas, strings.Join(cpus, " / "), strings.Join(rss, " / "),
			strings.Join(anon, " / "), joinFloats(perRep, "%.0f"))
	}
	p("\n*µs of CPU per replica per second* divides a node's CPU by its groups (replicas + the metadata group).\n\n")
	p("Every sample, per node (n1 / n2 / n3):\n\n")
	p("| profile | replicas per node | run | load avg | other (cores) | start to all led | CPU (cores) | RSS (MiB) | anon | file | leaders |\n")
	p("|---|---:|---:|---|---:|---:|---|---|---|---|---|\n")
	for _, s := range samples {
		p("| %s | %d | %d | %s | %.2f | %s | %s | %s | %s | %s | %s |\n", s.Cell.Profile, s.Cell.Replicas, s.Run, s.LoadAvg, s.OtherCPU,
			fmtDur(s.Start), joinFloats(s.CPU, "%.3f"), joinMem(s.Mem, func(m memStatus) int64 { return m.RSS }),
			joinMem(s.Mem, func(m memStatus) int64 { return m.Anon }), joinMem(s.Mem, func(m memStatus) int64 { return m.File }),
			strings.Trim(fmt.Sprint(s.Leaders), "[]"))
		if s.Err != "" {
			p("\nreading memory failed: %s\n\n", s.Err)
		}
	}
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var s float64
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

func meanMem(ms []memStatus, f func(memStatus) int64) float64 {
	v := make([]float64, len(ms))
	for i, m := range ms {
		v[i] = float64(f(m)) / (1 << 20)
	}
	return mean(v)
}
