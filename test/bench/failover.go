package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/zerogrid/zerogrid/grid"
)

// runFailover measures, cfg.failover times, how long a partition is
// unavailable after its leader's process is killed with SIGKILL: from the
// kill to the first acknowledged put, and to the first linearizable get,
// each issued right after the kill with the client's default retry policy
// inside a 10 s deadline. The killed node is restarted and the cluster
// given time to settle between rounds. zerogrid only.
func runFailover(ctx context.Context, cfg config, stdout io.Writer, logf func(string, ...any)) error {
	dir, err := os.MkdirTemp("", "zerogrid-failover-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := cfg.zgBin
	if bin == "" {
		bin = filepath.Join(dir, "zerogrid")
		if err := buildZerogrid(ctx, bin); err != nil {
			return err
		}
	}
	z, err := startZerogrid(ctx, bin, filepath.Join(dir, "cluster"), cfg.profile)
	if err != nil {
		return err
	}
	defer z.Close()
	key := []byte("failover-key")
	table, err := z.client.Table(ctx)
	if err != nil {
		return err
	}
	part := grid.PartitionOf(benchMap, key, len(table.Partitions))
	var puts, gets []time.Duration
	failed := 0
	for round := range cfg.failover {
		if _, err := z.m.Put(ctx, key, []byte("v")); err != nil {
			return fmt.Errorf("round %d: put before the kill: %w", round, err)
		}
		t, err := z.client.Table(ctx)
		if err != nil {
			return err
		}
		victim := t.Partitions[part].Leader
		pid, err := z.pidOf(victim)
		if err != nil {
			return err
		}
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return err
		}
		done := make(chan struct{}, 2)
		var putAt, getAt time.Duration
		var putErr, getErr error
		go func() {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, putErr = z.m.Put(pctx, key, []byte(fmt.Sprint(round)))
			putAt = time.Since(killed)
			done <- struct{}{}
		}()
		go func() {
			gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, _, getErr = z.m.Get(gctx, key)
			getAt = time.Since(killed)
			done <- struct{}{}
		}()
		<-done
		<-done
		if putErr != nil || getErr != nil {
			failed++
			logf("round %d: put %v (%v), get %v (%v)", round, putAt, putErr, getAt, getErr)
		} else {
			puts, gets = append(puts, putAt), append(gets, getAt)
			logf("round %d: killed %s (leader of partition %d); put acknowledged after %v, get after %v", round, victim, part, putAt.Round(time.Millisecond), getAt.Round(time.Millisecond))
		}
		if err := z.cluster.StartNode(ctx, victim); err != nil {
			return err
		}
		z.pids = nil
		for _, id := range z.cluster.IDs() {
			p, err := z.pidOf(id)
			if err != nil {
				return err
			}
			z.pids = append(z.pids, p)
		}
		time.Sleep(5 * time.Second) // the restarted node catches up; leaders settle
	}
	fmt.Fprintf(stdout, "Failover: %d SIGKILLs of a partition leader (3 nodes, profile %s), client default retry policy, 10 s deadline\n\n", cfg.failover, cfg.profile)
	fmt.Fprintf(stdout, "| first acknowledged after the kill | p50 | p90 | max | failed |\n|---|---:|---:|---:|---:|\n")
	fmt.Fprintf(stdout, "| put | %s | %s | %s | %d |\n", pct(puts, 50), pct(puts, 90), pct(puts, 100), failed)
	fmt.Fprintf(stdout, "| linearizable get | %s | %s | %s | %d |\n", pct(gets, 50), pct(gets, 90), pct(gets, 100), failed)
	return nil
}

func pct(d []time.Duration, p int) string {
	if len(d) == 0 {
		return "–"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	i = min(max(i-1, 0), len(s)-1)
	return s[i].Round(time.Millisecond).String()
}
