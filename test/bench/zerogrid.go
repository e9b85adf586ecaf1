package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// benchMap is the map the workload uses.
const benchMap = "bench"

// zgStore is a 3-node zerogrid cluster of real processes and one client
// shared by every workload goroutine (client.Client is safe for concurrent
// use).
type zgStore struct {
	cluster *localcluster.Cluster
	binary  string // absolute path of the nodes' binary
	client  *client.Client
	m       *client.Map
	pids    []int
}

var _ store = (*zgStore)(nil)

// buildZerogrid builds cmd/zerogrid with the root module's own go.mod, so the
// binary has the same dependency versions as a release build, not those this
// module's requirement graph (etcd's client) would select.
func buildZerogrid(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/zerogrid/zerogrid")
	dir, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("find the zerogrid module (run from test/bench, or pass -zerogrid): %w", err)
	}
	build := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/zerogrid")
	build.Dir = strings.TrimSpace(string(dir))
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/zerogrid in %s: %w", build.Dir, err)
	}
	return nil
}

// startZerogrid starts the cluster, creates the map and waits until every
// partition has a leader.
func startZerogrid(ctx context.Context, binary, dir, profile string, insecure bool) (*zgStore, error) {
	abs, err := filepath.Abs(binary)
	if err != nil {
		return nil, err
	}
	return startZerogridConfig(ctx, localcluster.Config{
		Binary: abs, Dir: dir, Nodes: 3, Partitions: 32, Replicas: 3, Profile: profile, Insecure: insecure,
	})
}

// startZerogridConfig starts a cluster as cfg says (cfg.Binary absolute),
// creates the map and waits until every partition has a leader.
func startZerogridConfig(ctx context.Context, cfg localcluster.Config) (*zgStore, error) {
	cl, err := localcluster.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	z := &zgStore{cluster: cl, binary: cfg.Binary}
	if err := z.init(ctx); err != nil {
		z.Close()
		return nil, err
	}
	return z, nil
}

// pidOf finds node id's process.
func (z *zgStore) pidOf(id string) (int, error) {
	pid, err := findPIDByArg(z.binary, "--data-dir", z.cluster.DataDir(id))
	if err != nil {
		return 0, fmt.Errorf("zerogrid node %s: %w", id, err)
	}
	return pid, nil
}

func (z *zgStore) init(ctx context.Context) error {
	for _, id := range z.cluster.IDs() {
		pid, err := z.pidOf(id)
		if err != nil {
			return err
		}
		z.pids = append(z.pids, pid)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var err error
	for {
		if z.client == nil {
			z.client, err = client.DialWith(wctx, z.cluster.Addrs(), client.WithTLSDir(z.cluster.ClientTLSDir()))
		}
		if z.client != nil {
			err = z.client.CreateMap(wctx, benchMap)
			if errors.Is(err, grid.ErrMapExists) {
				err = nil
			}
		}
		if err == nil {
			err = z.allLeaders(wctx)
		}
		if err == nil {
			z.m = z.client.Map(benchMap)
			return nil
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("zerogrid cluster not ready: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (z *zgStore) allLeaders(ctx context.Context) error {
	t, err := z.client.Table(ctx)
	if err != nil {
		return err
	}
	for _, p := range t.Partitions {
		if p.Leader == "" {
			return fmt.Errorf("partition %d has no leader yet", p.ID)
		}
	}
	return nil
}

func (z *zgStore) Name() string { return "zerogrid" }

func (z *zgStore) Put(ctx context.Context, key, value []byte) error {
	_, err := z.m.Put(ctx, key, value)
	return err
}

func (z *zgStore) Get(ctx context.Context, key []byte) error {
	_, _, err := z.m.Get(ctx, key)
	return err
}

func (z *zgStore) StaleGet(ctx context.Context, key []byte) error {
	_, _, err := z.m.Get(ctx, key, client.Stale())
	return err
}

func (z *zgStore) PIDs() []int { return z.pids }

func (z *zgStore) Close() {
	if z.client != nil {
		_ = z.client.Close()
	}
	z.cluster.Stop()
}

// scrapeEvery reads every node's /metrics each interval, as a Prometheus
// server would, until the returned stop is called.
func (z *zgStore) scrapeEvery(ctx context.Context, interval time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for _, id := range z.cluster.IDs() {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+z.cluster.OpsAddr(id)+"/metrics", nil)
				if err != nil {
					continue
				}
				if resp, err := http.DefaultClient.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

func (z *zgStore) ProfileURLs(secs int) map[string]string {
	urls := map[string]string{}
	for _, id := range z.cluster.IDs() {
		if a := z.cluster.OpsAddr(id); a != "" {
			urls[id] = fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", a, secs)
		}
	}
	return urls
}

// redial replaces the store's client with one made with opts.
func (z *zgStore) redial(ctx context.Context, opts ...client.Option) error {
	c, err := client.DialWith(ctx, z.cluster.Addrs(), append([]client.Option{client.WithTLSDir(z.cluster.ClientTLSDir())}, opts...)...)
	if err != nil {
		return err
	}
	_ = z.client.Close()
	z.client, z.m = c, c.Map(benchMap)
	return nil
}
