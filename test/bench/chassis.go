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

	"github.com/zerogrid/zerogrid/node/localcluster"
)

// chassisConfig is the -chassis mode: an HPE-Moonshot-sized grid of node
// processes on this machine, in zones ("uplinks"), formed by joining.
type chassisConfig struct {
	nodes, zones, partitions int
	idle                     time.Duration
}

func (c *chassisConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.nodes, "chassis", 0, "instead: start this many nodes (3 founders, the rest joining), in -chassis-zones zone labels, and report forming time, replica and leader balance, idle CPU and RSS per node (zerogrid only)")
	fs.IntVar(&c.zones, "chassis-zones", 3, "with -chassis: zones (label zone=uplink-a, -b, ...), nodes dealt round-robin")
	fs.IntVar(&c.partitions, "chassis-partitions", 135, "with -chassis: partitions")
	fs.DurationVar(&c.idle, "chassis-idle", 30*time.Second, "with -chassis: idle window measured once formed")
}

func (c *chassisConfig) validate() []error {
	if c.nodes == 0 {
		return nil
	}
	var errs []error
	if c.nodes < 3 || c.zones < 1 || c.partitions < 1 {
		errs = append(errs, fmt.Errorf("-chassis %d -chassis-zones %d -chassis-partitions %d: need at least 3 nodes, 1 zone, 1 partition", c.nodes, c.zones, c.partitions))
	}
	return errs
}

func (c *chassisConfig) zoneOf(i int) string { return fmt.Sprintf("uplink-%c", 'a'+i%c.zones) }

// runChassis starts the founders, joins the others one after another, waits
// until every partition has its replicas in place (none moving, in as many
// zones as it has replicas when there are enough zones) and a leader, then
// measures an idle window.
func runChassis(ctx context.Context, cfg config, stdout io.Writer, logf func(string, ...any)) error {
	cc := cfg.chassis
	dir, bin, err := scratch(ctx, cfg, "zerogrid-chassis-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if bin, err = filepath.Abs(bin); err != nil {
		return err
	}
	start := time.Now()
	z, err := startZerogridConfig(ctx, localcluster.Config{Binary: bin, Dir: filepath.Join(dir, "cluster"), Nodes: 3,
		Partitions: cc.partitions, Replicas: 3, Profile: cfg.profile, Insecure: cfg.insecure, JoinToken: "chassis-token",
		FounderArgs: func(id string) []string {
			var i int
			fmt.Sscanf(id, "n%d", &i)
			return []string{"--label", "zone=" + cc.zoneOf(i-1)}
		}})
	if err != nil {
		return err
	}
	defer z.Close()
	founded := time.Since(start)
	logf("3 founders up, every partition led, after %v", founded.Round(time.Millisecond))
	for i := 3; i < cc.nodes; i++ {
		id, err := z.cluster.Join(ctx, "", "--label", "zone="+cc.zoneOf(i))
		if err != nil {
			return fmt.Errorf("join node %d: %w", i+1, err)
		}
		pid, err := z.pidOf(id)
		if err != nil {
			return err
		}
		z.pids = append(z.pids, pid)
	}
	joined := time.Since(start)
	logf("%d nodes started after %v; waiting for the table to settle", cc.nodes, joined.Round(time.Millisecond))

	var last string
	wctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	var st chassisState
	// Settled: every node in the table, no partition moving or short of
	// replicas, every partition led, and the table unchanged for 10 s
	// (the manager moves a few replicas at a time).
	var calm time.Time
	var calmEpoch uint64
	for {
		st, err = z.chassisState(wctx, cc)
		if err == nil && st.settled == "" {
			if calm.IsZero() || st.epoch != calmEpoch {
				calm, calmEpoch = time.Now(), st.epoch
			} else if time.Since(calm) >= 10*time.Second {
				break
			}
		} else {
			calm = time.Time{}
		}
		msg := st.settled
		switch {
		case err != nil:
			msg = err.Error()
		case msg == "":
			msg = fmt.Sprintf("in place at table epoch %d; waiting for 10 s without a change", st.epoch)
		}
		if msg != last {
			logf("not settled: %s", msg)
			last = msg
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("chassis did not settle: %s", msg)
		case <-time.After(2 * time.Second):
		}
	}
	formed := calm.Sub(start)
	logf("settled after %v; idle for %v", formed.Round(time.Second), cc.idle)

	before := make([]int64, len(z.pids))
	for i, p := range z.pids {
		before[i] = sumTicks([]int{p})
	}
	t0 := time.Now()
	sleepUntil(ctx, t0.Add(cc.idle))
	secs := time.Since(t0).Seconds()
	var cpu, rss []float64
	for i, p := range z.pids {
		cpu = append(cpu, float64(sumTicks([]int{p})-before[i])/clockTicks/secs)
		m, err := readMem(p)
		if err != nil {
			return err
		}
		rss = append(rss, float64(m.RSS)/(1<<20))
	}

	p := func(format string, a ...any) { fmt.Fprintf(stdout, format, a...) }
	env := describeMachine(cfg)
	p("Chassis: %d nodes on %d × %s (3 founders, %d joined one after another), %d zones, %d partitions × 3 replicas, profile %s, %s; %s\n\n",
		cc.nodes, env.NumCPU, env.CPU, cc.nodes-3, cc.zones, cc.partitions, cfg.profile, tlsMode(cfg.insecure), time.Now().UTC().Format("2006-01-02 15:04 MST"))
	p("| step | after |\n|---|---:|\n| founders up, every partition led | %v |\n| all %d nodes started | %v |\n| settled: every partition with 3 replicas, none moving, every partition led (and so for 10 s more) | %v |\n\n",
		founded.Round(time.Millisecond), cc.nodes, joined.Round(time.Millisecond), formed.Round(time.Second))
	p("Partitions whose 3 replicas are not in %d different zones: %d of %d (table epoch %d).\n\n", min(3, cc.zones), st.zonesShort, cc.partitions, st.epoch)
	share := float64(cc.partitions*3) / float64(cc.nodes)
	lshare := float64(cc.partitions) / float64(cc.nodes)
	p("| per node | share | min | max | outside ±10 %% of the share |\n|---|---:|---:|---:|---:|\n")
	p("| replicas | %.1f | %d | %d | %d of %d |\n", share, slices.Min(st.replicas), slices.Max(st.replicas), outside(st.replicas, share), cc.nodes)
	p("| leaders | %.1f | %d | %d | %d of %d |\n\n", lshare, slices.Min(st.leaders), slices.Max(st.leaders), outside(st.leaders, lshare), cc.nodes)
	p("Idle over %.0f s once settled: CPU per node %.3f–%.3f cores (mean %.3f, %.2f cores for all %d); RSS per node %.0f–%.0f MiB (mean %.0f).\n",
		secs, slices.Min(cpu), slices.Max(cpu), mean(cpu), mean(cpu)*float64(len(cpu)), len(cpu), slices.Min(rss), slices.Max(rss), mean(rss))
	return nil
}

// chassisState is what the cluster says of itself: replicas and leaders per
// node (in node order), and why it has not settled ("" once it has).
type chassisState struct {
	replicas, leaders []int
	epoch             uint64
	zonesShort        int // partitions whose replicas share a zone
	settled           string
}

func (z *zgStore) chassisState(ctx context.Context, cc chassisConfig) (chassisState, error) {
	ids := z.cluster.IDs()
	st := chassisState{replicas: make([]int, len(ids)), leaders: make([]int, len(ids))}
	index := map[string]int{}
	for i, id := range ids {
		index[id] = i
	}
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	t, err := z.client.Table(tctx)
	cancel()
	if err != nil {
		return st, err
	}
	// The zone each node was started with (the table's node entries carry
	// only labels an operator set later; announced ones are in the records).
	zone := map[string]string{}
	for _, id := range ids {
		var i int
		fmt.Sscanf(id, "n%d", &i)
		zone[id] = cc.zoneOf(i - 1)
	}
	var problems []string
	if len(t.Nodes) != len(ids) {
		problems = append(problems, fmt.Sprintf("%d of %d nodes in the table", len(t.Nodes), len(ids)))
	}
	moving, short, zonesShort := 0, 0, 0
	for _, p := range t.Partitions {
		if p.Moving() {
			moving++
		}
		if len(p.Replicas) != 3 {
			short++
		}
		zs := map[string]bool{}
		for _, r := range p.Replicas {
			zs[zone[r]] = true
			if i, ok := index[r]; ok {
				st.replicas[i]++
			}
		}
		if len(zs) < min(3, cc.zones) {
			zonesShort++
		}
	}
	st.epoch, st.zonesShort = t.Epoch, zonesShort
	if moving+short > 0 {
		problems = append(problems, fmt.Sprintf("table epoch %d: %d partitions moving, %d without 3 replicas", t.Epoch, moving, short))
	}
	led := map[int32]bool{}
	for i, id := range ids {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ns, err := z.client.NodeStatus(sctx, z.cluster.Addr(id))
		cancel()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", id, err))
			continue
		}
		for _, g := range ns.Groups {
			if g.Partition >= 0 && g.State == "Leader" {
				st.leaders[i]++
				led[g.Partition] = true
			}
		}
	}
	if len(led) != len(t.Partitions) {
		problems = append(problems, fmt.Sprintf("%d of %d partitions led", len(led), len(t.Partitions)))
	}
	st.settled = strings.Join(problems, "; ")
	if st.settled == "" && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		st.settled = "timed out"
	}
	return st, nil
}

// outside counts the values more than 10 % away from share.
func outside(vals []int, share float64) int {
	n := 0
	for _, v := range vals {
		if float64(v) < 0.9*share || float64(v) > 1.1*share {
			n++
		}
	}
	return n
}
