package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/zerogrid/zerogrid/node/localcluster"
)

// idleCell is one (profile, replicas per node) configuration.
type idleCell struct {
	Profile  string
	Replicas int // per node: the partition count, with 3 nodes and 3 replicas
}

// idleSample is one run of one cell: an idle 3-node cluster, per node.
type idleSample struct {
	Cell     idleCell
	Run      int
	Start    time.Duration // from localcluster.Start to every partition led
	LoadAvg  string        // at the window's start
	CPU      []float64     // per node, cores, over the window
	Mem      []memStatus   // per node, at the window's end
	OtherCPU float64       // the rest of the machine over the window, cores
	Leaders  []int         // partitions each node led at the window's end
	Err      string
}

func runIdleScale(ctx context.Context, cfg config, stdout io.Writer, logf func(string, ...any)) error {
	cc := cfg.commission
	var cells []idleCell
	for _, p := range cc.idleProfiles {
		for _, r := range cc.idleReplicas {
			cells = append(cells, idleCell{p, r})
		}
	}
	return runMode(ctx, cfg, stdout, logf, func(dir, bin string, report io.Writer) error {
		var samples []idleSample
		for run := 1; run <= cc.idleRuns; run++ {
			for _, c := range cells {
				logf("idle-scale run %d: profile %s, %d partitions", run, c.Profile, c.Replicas)
				s, err := idleOnce(ctx, cc, bin, filepath.Join(dir, fmt.Sprintf("idle-%s-%d-%d", c.Profile, c.Replicas, run)), c)
				if err != nil {
					return fmt.Errorf("idle-scale %s/%d run %d: %w", c.Profile, c.Replicas, run, err)
				}
				s.Run = run
				logf("  CPU per node %s cores, RSS per node %s MiB (load average %s, other %.2f cores)",
					joinFloats(s.CPU, "%.3f"), joinMem(s.Mem, func(m memStatus) int64 { return m.RSS }), s.LoadAvg, s.OtherCPU)
				samples = append(samples, s)
			}
		}
		idleScaleReport(report, cfg, describeMachine(cfg), cells, samples)
		return nil
	})
}

// idleOnce starts a fresh cluster for c, waits for leaders and the settle
// time, and measures one window.
func idleOnce(ctx context.Context, cc commissionConfig, bin, dir string, c idleCell) (idleSample, error) {
	s := idleSample{Cell: c}
	t0 := time.Now()
	z, err := startZerogridConfig(ctx, localcluster.Config{
		Binary: bin, Dir: dir, Nodes: 3, Partitions: c.Replicas, Replicas: 3, Profile: c.Profile,
	})
	if err != nil {
		return s, err
	}
	defer z.Close()
	s.Start = time.Since(t0)
	if sleepUntil(ctx, time.Now().Add(cc.idleSettle)); ctx.Err() != nil {
		return s, ctx.Err()
	}
	s.LoadAvg = loadAvg()
	pids := z.PIDs()
	before := make([]int64, len(pids))
	for i, p := range pids {
		if before[i], err = cpuTicks(p); err != nil {
			return s, err
		}
	}
	busy0 := machineBusy()
	start := time.Now()
	if sleepUntil(ctx, start.Add(cc.idleWindow)); ctx.Err() != nil {
		return s, ctx.Err()
	}
	el := time.Since(start).Seconds()
	var cluster float64
	for i, p := range pids {
		t, err := cpuTicks(p)
		if err != nil {
			return s, err
		}
		cpu := float64(t-before[i]) / clockTicks
		cluster += cpu
		s.CPU = append(s.CPU, cpu/el)
		m, err := readMem(p)
		if err != nil {
			s.Err = err.Error()
		}
		s.Mem = append(s.Mem, m)
	}
	s.OtherCPU = max(0, (float64(machineBusy()-busy0)/clockTicks-cluster)/el)
	if t, err := z.client.Table(ctx); err == nil {
		for _, id := range z.cluster.IDs() {
			n := 0
			for _, p := range t.Partitions {
				if p.Leader == id {
					n++
				}
			}
			s.Leaders = append(s.Leaders, n)
		}
	}
	return s, nil
}

func joinFloats(v []float64, format string) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(parts, " / ")
}

func joinMem(ms []memStatus, f func(memStatus) int64) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = fmt.Sprintf("%.0f", float64(f(m))/(1<<20))
	}
	return strings.Join(parts, " / ")
}
