package main

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// computeReport writes the compute-vs-scan results as markdown.
func computeReport(w io.Writer, cfg config, env environment, own bool, r computeResult) {
	cc := cfg.compute
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	l := r.Load
	gen := recordGen{seed: cc.seed, size: cc.recordBytes, shops: cc.shops}

	p("Run %s on %d × %s, Linux %s, %s, zerogrid %s.\n", env.Date, env.NumCPU, env.CPU, env.Kernel, env.Go, env.Commit)
	p("Data: %d records (keys like `%s`, values %d-byte JSON like `%.60s…`), %d shops, 4 regions; "+
		"3 zerogrid nodes (%d partitions, 3 replicas, profile %s), real processes.\n",
		l.Records, gen.key(0), cc.recordBytes, exampleRecord(gen), cc.shops, r.Partitions, cfg.profile)
	p("Loaded in %s: %.0f records/s, %.0f transactions/s (up to %d puts or %d bytes per transaction, keys grouped by partition, "+
		"%d transactions in flight), %d failed attempts (retried).", fmtDur(l.Elapsed), float64(l.Records)/l.Elapsed.Seconds(),
		float64(l.Txns)/l.Elapsed.Seconds(), cc.batchOps, cc.batchBytes, cc.inflight, l.Errors)
	if l.TimedOut {
		p(" **The load stopped at the %v limit: %d of %d records.**", cc.loadLimit, l.Records, cc.records)
	}
	if l.FirstErr != "" {
		p(" First error: %s.", l.FirstErr)
	}
	p("\n\nThe aggregate: EU sales per shop, filter `%s`, `%s`. *job*: `client.Run` of that job (linearizable, the default). "+
		"*scan*: `Map.Scan` of the whole map (linearizable, pages of %d), every value decoded with `encoding/json` and summed at the client. "+
		"Both run through one client per link; one warm-up run of each, then %d measured run(s) of each, alternating. "+
		"Every run's result was checked against the sums of the generated data and against the other method's: all equal.\n\n",
		aggFilter, aggExpr, cc.scanPage, cc.runs)

	p("Bytes: *client* is what crossed the client's sockets (sent / received: gRPC and HTTP/2 framing, not TCP/IP headers), counted by " +
		"the client's dialer. ")
	if own {
		p("*all loopback* is every byte through the loopback interface of the benchmark's own network namespace during the run, " +
			"from its counters: client and node-to-node traffic (tasks, partial results, Raft), with TCP/IP headers, and the " +
			"cluster's idle background traffic (Raft heartbeats) too, which is most of the job's figure (see below).\n\n")
	} else {
		p("Node-to-node traffic was not measured (not in a private network namespace: the machine's loopback counters count others' traffic too).\n\n")
	}

	p("| link | method | wall time, median (min–max) | client bytes (sent / received) | all loopback bytes | node CPU s | driver CPU s | rest of machine (cores) |\n")
	p("|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, ph := range r.Phases {
		for _, m := range []struct {
			name string
			s    []sample
		}{{"job", ph.Job}, {"scan", ph.Scan}} {
			st := summarize(m.s)
			p("| %s | %s | %s (%s–%s) | %s (%s / %s) | %s | %.2f | %.2f | %.2f |\n", ph.Name, m.name,
				fmtDur(st.wall), fmtDur(st.wallMin), fmtDur(st.wallMax), fmtBytes(st.client), fmtBytes(st.sent), fmtBytes(st.recv),
				fmtLoBytes(st.lo), st.serverCPU, st.driverCPU, st.other)
		}
		j, s := summarize(ph.Job), summarize(ph.Scan)
		p("| %s | **scan ÷ job** | **%s** | **%s** | **%s** | %s | %s | |\n", ph.Name, ratio(float64(s.wall), float64(j.wall)),
			ratio(float64(s.client), float64(j.client)), loRatio(s.lo, j.lo), ratio(s.serverCPU, j.serverCPU), ratio(s.driverCPU, j.driverCPU))
	}
	p("\n*node CPU* sums the three node processes, *driver CPU* is the benchmark process (client library, JSON decoding and sums " +
		"for the scan), *rest of machine* is what everything else on the machine used meanwhile: the machine is shared, " +
		"so wall times are noisy; the two methods ran alternately, so their ratio is fair.\n")

	p("\n")
	for _, ph := range r.Phases {
		ji := ph.JobInfo
		nodes := slices.Sorted(maps.Keys(ji.ByNode))
		var where []string
		for _, n := range nodes {
			where = append(where, fmt.Sprintf("%s %d", n, ji.ByNode[n]))
		}
		p("- %s: ", ph.Name)
		if ph.Shape.Qdisc != "" {
			p("`tc qdisc add dev lo root %s`", ph.Shape.Qdisc)
			if ph.Shape.ClientDelay > 0 {
				p(" (this kernel has no netem), and the driver delays every byte on the client's connections by %v each way (node-to-node links get the rate limit but no delay)", ph.Shape.ClientDelay)
			}
			var drops int64
			for _, s := range append(slices.Clone(ph.Job), ph.Scan...) {
				drops += s.Drops
			}
			p("; packets dropped by the qdisc during the runs: %d. ", drops)
		}
		if ph.Background >= 0 {
			j := summarize(ph.Job)
			own := j.client + ji.BytesSent
			p("Idle background traffic %s/s, about %s over the job's median run; the job's own traffic is at least its client bytes "+
				"plus its partial results, %s, against the scan's %s on loopback (%s). ", fmtBytes(int64(ph.Background)),
				fmtBytes(int64(ph.Background*j.wall.Seconds())), fmtBytes(own), fmtLoBytes(summarize(ph.Scan).lo),
				loRatio(summarize(ph.Scan).lo, own))
		}
		p("Last job: %d tasks (%s; %s), %d entries read, %s read from local stores, %s of partial results sent, "+
			"%d-byte result, %d groups, %d retries, %d hedges, %v at the coordinator.\n",
			ji.Tasks, strings.Join(where, ", "), strings.Join(ji.ReasonsSeen, "; "), ji.Entries, fmtBytes(ji.BytesRead),
			fmtBytes(ji.BytesSent), ji.ResultJSONLength, ji.GroupsInResult, ji.Retries, ji.Hedges, ji.CoordinatorTime.Round(time.Millisecond))
	}

	p("\n| aim | measured | verdict |\n|---|---|---|\n")
	for _, ph := range r.Phases {
		j, s := summarize(ph.Job), summarize(ph.Scan)
		want := 5.0
		if ph.Shape.Qdisc != "" {
			want = 10
		}
		p("| ≥ %.0f× faster, %s | %s | %s |\n", want, ph.Name, ratio(float64(s.wall), float64(j.wall)), verdict(float64(s.wall) >= want*float64(j.wall)))
		p("| ≥ 1000× fewer bytes, %s: client's link | %s | %s |\n", ph.Name, ratio(float64(s.client), float64(j.client)),
			verdict(float64(s.client) >= 1000*float64(j.client)))
		if s.lo >= 0 && j.lo > 0 {
			p("| ≥ 1000× fewer bytes, %s: all loopback, idle background included | %s | %s |\n", ph.Name, loRatio(s.lo, j.lo),
				verdict(float64(s.lo) >= 1000*float64(j.lo)))
		}
	}
}

// exampleRecord is an example value.
func exampleRecord(g recordGen) string {
	_, _, _, v := g.record(0)
	return string(v)
}

type sampleSummary struct {
	wall, wallMin, wallMax      time.Duration
	client, sent, recv          int64
	lo                          int64 // -1: not measured
	serverCPU, driverCPU, other float64
}

// summarize takes the median of each figure over the runs (runs are few,
// and one slow run on a shared machine should not move the figure).
func summarize(ss []sample) sampleSummary {
	var st sampleSummary
	if len(ss) == 0 {
		return sampleSummary{lo: -1}
	}
	med := func(f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	st.wall = time.Duration(med(func(s sample) float64 { return float64(s.Wall) }))
	st.wallMin = slices.MinFunc(ss, func(a, b sample) int { return cmp.Compare(a.Wall, b.Wall) }).Wall
	st.wallMax = slices.MaxFunc(ss, func(a, b sample) int { return cmp.Compare(a.Wall, b.Wall) }).Wall
	st.sent = int64(med(func(s sample) float64 { return float64(s.Client.Sent) }))
	st.recv = int64(med(func(s sample) float64 { return float64(s.Client.Recv) }))
	st.client = int64(med(func(s sample) float64 { return float64(s.Client.Total()) }))
	st.lo = -1
	if ss[0].Lo >= 0 {
		st.lo = int64(med(func(s sample) float64 { return float64(s.Lo) }))
	}
	st.serverCPU = med(func(s sample) float64 { return s.ServerCPU })
	st.driverCPU = med(func(s sample) float64 { return s.DriverCPU })
	st.other = med(func(s sample) float64 {
		return max(0, s.MachineCPU-s.ServerCPU-s.DriverCPU) / s.Wall.Seconds()
	})
	return st
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "–"
	}
	r := a / b
	switch {
	case r >= 100:
		return fmt.Sprintf("%s×", groupDigits(int64(r+0.5)))
	case r >= 10:
		return fmt.Sprintf("%.0f×", r)
	}
	return fmt.Sprintf("%.1f×", r)
}

func loRatio(a, b int64) string {
	if a < 0 || b < 0 {
		return "n/a"
	}
	return ratio(float64(a), float64(b))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func fmtLoBytes(n int64) string {
	if n < 0 {
		return "n/a"
	}
	return fmtBytes(n)
}

// fmtBytes prints a byte count exactly below 10 kB, else in kB, MB or GB
// (powers of 10).
func fmtBytes(n int64) string {
	f := float64(n)
	switch {
	case n < 10_000:
		return fmt.Sprintf("%d B", n)
	case n < 1_000_000:
		return fmt.Sprintf("%.1f kB", f/1e3)
	case n < 1_000_000_000:
		return fmt.Sprintf("%.1f MB", f/1e6)
	}
	return fmt.Sprintf("%.2f GB", f/1e9)
}

// groupDigits writes 12345 as "12 345".
func groupDigits(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(c)
	}
	return b.String()
}
