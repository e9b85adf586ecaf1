package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "demo [--keep] [--keys N] [--dir DIR]", stderr)
	keep := fs.Bool("keep", false, "leave the cluster running at the end (Ctrl-C stops it)")
	keys := fs.Int("keys", 1000, "sample entries to load")
	dir := fs.String("dir", "", "data directory (default: a new temp dir, removed at the end)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("%w: demo takes no arguments", errUsage)
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo: find own binary: %w", err)
	}
	root := *dir
	if root == "" {
		if root, err = os.MkdirTemp("", "zerogrid-demo-"); err != nil {
			return err
		}
		if !*keep {
			defer os.RemoveAll(root)
		}
	}
	say := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	step := func(format string, a ...any) { fmt.Fprintf(stdout, "\n==> "+format+"\n", a...) }

	step("starting 3 zerogrid node processes on loopback (data in %s)", root)
	cl, err := localcluster.Start(ctx, localcluster.Config{Binary: bin, Dir: root, Nodes: 3, Partitions: 16, Replicas: 3, Profile: "test", JoinToken: "demo-token", Ops: true, RESP: true})
	if err != nil {
		return err
	}
	defer cl.Stop()
	for _, id := range cl.IDs() {
		say("    %s  %s  Redis front door %s  (log: %s)", id, cl.Addr(id), cl.RESPAddr(id), cl.LogPath(id))
		say("        metrics http://%s/metrics   health http://%s/healthz   ready http://%s/readyz", cl.OpsAddr(id), cl.OpsAddr(id), cl.OpsAddr(id))
	}

	c, err := client.DialWith(ctx, cl.Addrs(), client.WithTLSDir(cl.ClientTLSDir()))
	if err != nil {
		return err
	}
	defer c.Close()

	step("creating maps \"cities\" and \"redis\" (what Redis clients see) and loading %d sample entries", *keys)
	for _, name := range []string{"cities", "redis"} {
		if err := retry(ctx, 20*time.Second, func(ctx context.Context) error {
			err := c.CreateMap(ctx, name)
			if errors.Is(err, client.ErrMapExists) {
				return nil
			}
			return err
		}); err != nil {
			return fmt.Errorf("demo: create map %s: %w", name, err)
		}
	}
	m := c.Map("cities")
	start := time.Now()
	if err := loadConcurrently(ctx, m, *keys, 16); err != nil {
		return err
	}
	say("    loaded %d entries in %v", *keys, time.Since(start).Round(time.Millisecond))

	step("where everything went: nodes, partitions, leaders")
	if err := printStatus(ctx, c, stdout); err != nil {
		return err
	}

	step("shipping a job to the data: population per zone, computed where each partition lives")
	say("    zerogrid job run --map cities --agg 'sum(v.population) by v.zone'")
	if err := retry(ctx, 30*time.Second, func(ctx context.Context) error {
		return demoJob(ctx, c, stdout)
	}); err != nil {
		return fmt.Errorf("demo: job: %w", err)
	}

	victim := "n2"
	step("killing %s with SIGKILL", victim)
	if err := cl.Kill(victim); err != nil {
		return err
	}
	step("reads and writes still work on the surviving majority")
	if err := retry(ctx, 30*time.Second, func(ctx context.Context) error {
		return checkAll(ctx, m, *keys)
	}); err != nil {
		return fmt.Errorf("demo: read after kill: %w", err)
	}
	say("    all %d entries read back (linearizable reads from the new leaders)", *keys)
	for i := *keys; i < *keys+100; i++ {
		k, v := sampleEntry(i)
		if err := retry(ctx, 30*time.Second, func(ctx context.Context) error { _, err := m.Put(ctx, k, v); return err }); err != nil {
			return fmt.Errorf("demo: write after kill: %w", err)
		}
	}
	say("    wrote 100 more entries while %s is down", victim)
	if err := printStatus(ctx, c, stdout); err != nil {
		return err
	}

	step("restarting %s; it catches up from the Raft logs of its peers", victim)
	if err := cl.StartNode(ctx, victim); err != nil {
		return err
	}
	if err := retry(ctx, 60*time.Second, func(ctx context.Context) error {
		return caughtUp(ctx, c, victim)
	}); err != nil {
		return fmt.Errorf("demo: %s did not catch up: %w", victim, err)
	}
	total := *keys + 100
	n := 0
	if err := m.Scan(ctx, nil, func(client.Entry) error { n++; return nil }, client.Stale()); err != nil {
		return err
	}
	say("    %s caught up; a stale scan over all replicas sees %d entries (expected %d)", victim, n, total)
	if err := printStatus(ctx, c, stdout); err != nil {
		return err
	}

	step("a fourth node joins with the cluster's token; replicas rebalance onto it")
	say("    zerogrid cert node --ca CA --id n4 --host 127.0.0.1 --out n4-tls")
	say("    zerogrid node --id n4 --join %s --join-token-file join-token --tls-dir n4-tls --label zone=shelf-2 ...", cl.Addrs()[0])
	joined, err := cl.Join(ctx, "n4", "--label", "zone=shelf-2")
	if err != nil {
		return fmt.Errorf("demo: join: %w", err)
	}
	if err := retry(ctx, 90*time.Second, func(ctx context.Context) error {
		t, err := c.Table(ctx)
		if err != nil {
			return err
		}
		moving := 0
		for _, p := range t.Partitions {
			if p.Moving() {
				moving++
			}
		}
		if held := len(t.Hosts(joined)); held < 10 || moving > 0 {
			return fmt.Errorf("%s holds %d replicas, %d moves in flight", joined, held, moving)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("demo: rebalance: %w", err)
	}
	if err := retry(ctx, 30*time.Second, func(ctx context.Context) error { return checkAll(ctx, m, total) }); err != nil {
		return fmt.Errorf("demo: read after rebalance: %w", err)
	}
	say("    %s took its share; all %d entries still read back", joined, total)
	if err := runNodes(ctx, []string{"--addr", cl.Addrs()[0], "--tls-dir", cl.ClientTLSDir()}, stdout, stdout); err != nil {
		return err
	}

	step("every replica holds the same data: a digest of each partition on each replica, at one applied index")
	say("    zerogrid check")
	var rep client.CheckReport
	if err := retry(ctx, 30*time.Second, func(ctx context.Context) error {
		var err error
		if rep, err = c.Check(ctx, client.NoRepair()); err == nil && !rep.Clean() {
			err = errors.New("replicas differ")
		}
		return err
	}); err != nil {
		return fmt.Errorf("demo: check: %w", err)
	}
	for _, p := range rep.Partitions[:min(3, len(rep.Partitions))] {
		d := p.Replicas[0]
		say("    partition %d at index %d: %s agree on digest %016x over %d stored records", p.Partition, p.Index, strings.Join(p.Agreeing, ","), d.Digest, d.Entries)
	}
	say("    ... %d partitions checked, all replicas equal", len(rep.Partitions))

	if !*keep {
		step("done; stopping the cluster (run with --keep to leave it running)")
		return nil
	}
	step("cluster left running; every connection is mutual TLS with the demo's own CA; try:")
	addr := cl.Addrs()[0]
	say("    export ZEROGRID_TLS_DIR=%s", cl.ClientTLSDir())
	say("    zerogrid get cities city:0007 --addr %s", addr)
	say("    zerogrid put cities city:9999 '{\"name\":\"new\"}' --addr %s", addr)
	say("    zerogrid scan cities city:00 --addr %s", addr)
	say("    zerogrid status --addr %s", addr)
	say("    zerogrid watch cities city:00 --addr %s        (then put from another shell)", addr)
	say("    zerogrid backup --out cities.zgb --addr %s", addr)
	tlsDir := cl.ClientTLSDir()
	host, port, _ := strings.Cut(cl.RESPAddr(cl.IDs()[0]), ":")
	say("  Redis clients (map \"redis\"; SELECT cities for the other map):")
	say("    redis-cli -h %s -p %s --tls --cacert %s --cert %s --key %s", host, port,
		filepath.Join(tlsDir, "ca.crt"), filepath.Join(tlsDir, "client.crt"), filepath.Join(tlsDir, "client.key"))
	say("    then: SET greeting hello EX 60, GET greeting, TTL greeting, SCAN 0 MATCH g*, SELECT cities, GET city:0007")
	say("  (with `go run ./cmd/zerogrid` in place of `zerogrid`)  data: %s — Ctrl-C stops the nodes", filepath.Clean(root))
	<-ctx.Done()
	return nil
}

func sampleEntry(i int) ([]byte, []byte) {
	names := []string{"Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Quito", "Perth", "Tunis"}
	k := fmt.Sprintf("city:%04d", i)
	v := fmt.Sprintf(`{"name":"%s-%d","population":%d,"zone":"z%d"}`, names[i%len(names)], i, 1000+i*37%9000, i%4)
	return []byte(k), []byte(v)
}

func checkAll(ctx context.Context, m *client.Map, keys int) error {
	for i := 0; i < keys; i++ {
		k, want := sampleEntry(i)
		got, _, err := m.Get(ctx, k)
		if err != nil {
			return fmt.Errorf("get %s: %w", k, err)
		}
		if string(got) != string(want) {
			return fmt.Errorf("get %s: got %q want %q", k, got, want)
		}
	}
	return nil
}

// caughtUp reports nil once every group on node id has applied what its
// leader has applied (and so every acknowledged write).
func caughtUp(ctx context.Context, c *client.Client, id string) error {
	cs, err := collectStatus(ctx, c)
	if err != nil {
		return err
	}
	var behind []string
	for p, byNode := range cs.groups {
		mine, ok := byNode[id]
		if !ok {
			return fmt.Errorf("%s not reachable yet", id)
		}
		for _, g := range byNode {
			if g.State == "Leader" && mine.AppliedIndex < g.AppliedIndex {
				behind = append(behind, fmt.Sprint(p))
			}
		}
	}
	if len(behind) > 0 {
		return fmt.Errorf("partitions behind: %s", strings.Join(behind, ","))
	}
	return nil
}

// retry calls fn until it succeeds or the budget runs out.
func retry(ctx context.Context, budget time.Duration, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		err := fn(actx)
		acancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func demoJob(ctx context.Context, c *client.Client, w io.Writer) error {
	res, err := c.Run(ctx, client.Job{Map: "cities", Agg: "sum(v.population) by v.zone"})
	if err != nil {
		return err
	}
	perNode := map[string][]string{}
	var read, sent int64
	for _, t := range res.Tasks {
		perNode[t.Node] = append(perNode[t.Node], fmt.Sprint(t.Partition))
		read += t.BytesRead
		sent += t.BytesSent
	}
	for _, g := range res.Groups {
		fmt.Fprintf(w, "    zone %-4s population %v\n", g.Key, g.Value)
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		fmt.Fprintf(w, "    tasks on %s: partitions %s\n", id, strings.Join(perNode[id], ","))
	}
	fmt.Fprintf(w, "    %d tasks read %s where the data lives and sent %s of partial results (in %v)\n",
		len(res.Tasks), humanBytes(uint64(read)), humanBytes(uint64(sent)), res.Duration.Round(time.Millisecond))
	return nil
}

// loadConcurrently writes the sample entries from several goroutines: Raft
// batches concurrent proposals into one log write.
func loadConcurrently(ctx context.Context, m *client.Map, keys, workers int) error {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < keys; i += workers {
				k, v := sampleEntry(i)
				if _, err := m.Put(ctx, k, v); err != nil {
					errs <- fmt.Errorf("demo: load %s: %w", k, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
