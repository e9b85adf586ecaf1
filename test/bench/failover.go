package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/zerogrid/zerogrid/client"

	"github.com/zerogrid/zerogrid/grid"
)

// failoverTarget is a 3-member store whose leader can be killed.
type failoverTarget interface {
	put(ctx context.Context, round int) error
	get(ctx context.Context) error
	// killLeader sends sig (SIGKILL or SIGSTOP) to the leader (of the
	// measured key's partition) and names it.
	killLeader(ctx context.Context, sig syscall.Signal) (string, error)
	// restart starts a killed member again, or continues a stopped one.
	restart(ctx context.Context, victim string, sig syscall.Signal) error
}

// runFailover measures, cfg.failover times per store, how long a key is
// unavailable after its leader's process is killed with SIGKILL: from the
// kill to the first acknowledged put, and to the first linearizable get,
// each issued right after the kill with the client's default retry policy
// inside a 10 s deadline. The killed member is restarted and the cluster
// given time to settle between rounds. zerogrid, then etcd (when its
// binary is found) in the same run.
func runFailover(ctx context.Context, cfg config, stdout io.Writer, logf func(string, ...any)) error {
	dir, bin, err := scratch(ctx, cfg, "zerogrid-failover-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	type row struct {
		name       string
		puts, gets []time.Duration
		failed     int
	}
	var rows []row
	sig, what := syscall.SIGKILL, "SIGKILL"
	if cfg.failoverPause {
		sig, what = syscall.SIGSTOP, "SIGSTOP"
	}
	measure := func(name string, tg failoverTarget) error {
		r := row{name: name}
		for round := range cfg.failover {
			if err := tg.put(ctx, -1); err != nil {
				return fmt.Errorf("%s round %d: put before the kill: %w", name, round, err)
			}
			victim, err := tg.killLeader(ctx, sig)
			if err != nil {
				return fmt.Errorf("%s round %d: %w", name, round, err)
			}
			killed := time.Now()
			done := make(chan struct{}, 2)
			var putAt, getAt time.Duration
			var putErr, getErr error
			go func() {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				putErr = tg.put(pctx, round)
				putAt = time.Since(killed)
				done <- struct{}{}
			}()
			go func() {
				gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				getErr = tg.get(gctx)
				getAt = time.Since(killed)
				done <- struct{}{}
			}()
			<-done
			<-done
			if putErr != nil || getErr != nil {
				r.failed++
				logf("%s round %d: put %v (%v), get %v (%v)", name, round, putAt, putErr, getAt, getErr)
			} else {
				r.puts, r.gets = append(r.puts, putAt), append(r.gets, getAt)
				logf("%s round %d: %s %s; put acknowledged after %v, get after %v", name, round, what, victim, putAt.Round(time.Millisecond), getAt.Round(time.Millisecond))
			}
			if err := tg.restart(ctx, victim, sig); err != nil {
				return err
			}
			time.Sleep(5 * time.Second) // the restarted member catches up; leaders settle
		}
		rows = append(rows, r)
		return nil
	}

	z, err := startZerogrid(ctx, bin, filepath.Join(dir, "cluster"), cfg.profile, cfg.insecure)
	if err != nil {
		return err
	}
	if cfg.failoverPause {
		// A stopped leader accepts requests and never answers: without an
		// attempt timeout the client would wait out the whole deadline.
		pol := client.DefaultRetryPolicy()
		pol.AttemptTimeout = time.Second
		if err := z.redial(ctx, client.WithRetry(pol)); err != nil {
			z.Close()
			return err
		}
	}
	zt := &zgFailover{z: z, key: []byte("failover-key")}
	err = measure("zerogrid", zt)
	z.Close()
	if err != nil {
		return err
	}
	etcdBin, lookErr := exec.LookPath(cfg.etcdBin)
	if lookErr == nil {
		edir := filepath.Join(dir, "etcd")
		if err := os.MkdirAll(edir, 0o755); err != nil {
			return err
		}
		e, err := startEtcd(ctx, etcdBin, edir)
		if err != nil {
			return err
		}
		err = measure("etcd "+etcdVersion(etcdBin), &etcdFailover{e: e})
		e.Close()
		if err != nil {
			return err
		}
	} else {
		logf("etcd not measured: %v", lookErr)
	}
	attempts := ""
	if cfg.failoverPause {
		attempts = " in 1 s attempts"
	}
	fmt.Fprintf(stdout, "Failover: %d %ss of a leader per store (3 members on loopback; zerogrid profile %s, etcd defaults), zerogrid's client retrying by itself%s, etcd's retried in 1 s attempts, 10 s deadline\n\n", cfg.failover, what, cfg.profile, attempts)
	fmt.Fprintf(stdout, "| store | first acknowledged after the %s | p50 | p90 | max | failed |\n|---|---|---:|---:|---:|---:|\n", what)
	for _, r := range rows {
		fmt.Fprintf(stdout, "| %s | put | %s | %s | %s | %d |\n", r.name, pct(r.puts, 50), pct(r.puts, 90), pct(r.puts, 100), r.failed)
		fmt.Fprintf(stdout, "| %s | linearizable get | %s | %s | %s | %d |\n", r.name, pct(r.gets, 50), pct(r.gets, 90), pct(r.gets, 100), r.failed)
	}
	return nil
}

// zgFailover kills the leader of the partition holding key.
type zgFailover struct {
	z   *zgStore
	key []byte
}

func (f *zgFailover) put(ctx context.Context, round int) error {
	_, err := f.z.m.Put(ctx, f.key, []byte(fmt.Sprint(round)))
	return err
}

func (f *zgFailover) get(ctx context.Context) error {
	_, _, err := f.z.m.Get(ctx, f.key)
	return err
}

func (f *zgFailover) killLeader(ctx context.Context, sig syscall.Signal) (string, error) {
	t, err := f.z.client.Table(ctx)
	if err != nil {
		return "", err
	}
	victim := t.Partitions[grid.PartitionOf(benchMap, f.key, len(t.Partitions))].Leader
	pid, err := f.z.pidOf(victim)
	if err != nil {
		return "", err
	}
	return victim, syscall.Kill(pid, sig)
}

func (f *zgFailover) restart(ctx context.Context, victim string, sig syscall.Signal) error {
	if sig == syscall.SIGSTOP {
		pid, err := f.z.pidOf(victim)
		if err != nil {
			return err
		}
		return syscall.Kill(pid, syscall.SIGCONT)
	}
	if err := f.z.cluster.StartNode(ctx, victim); err != nil {
		return err
	}
	f.z.pids = nil
	for _, id := range f.z.cluster.IDs() {
		p, err := f.z.pidOf(id)
		if err != nil {
			return err
		}
		f.z.pids = append(f.z.pids, p)
	}
	return nil
}

// etcdFailover kills etcd's leader. clientv3 does not retry a request a
// member timed out on (a put forwarded to the dead leader fails after
// etcd's 7 s request timeout), so each operation is retried here as a user
// would: attempts of at most 1 s, 10 ms apart, until the deadline.
type etcdFailover struct{ e *etcdStore }

func (f *etcdFailover) retry(ctx context.Context, op func(context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		err := op(actx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (f *etcdFailover) put(ctx context.Context, round int) error {
	return f.retry(ctx, func(ctx context.Context) error {
		return f.e.Put(ctx, []byte("failover-key"), []byte(fmt.Sprint(round)))
	})
}

func (f *etcdFailover) get(ctx context.Context) error {
	return f.retry(ctx, func(ctx context.Context) error { return f.e.Get(ctx, []byte("failover-key")) })
}

func (f *etcdFailover) killLeader(ctx context.Context, sig syscall.Signal) (string, error) {
	i, err := f.e.leader(ctx)
	if err != nil {
		return "", err
	}
	p := f.e.procs[i]
	if err := p.cmd.Process.Signal(sig); err != nil {
		return "", err
	}
	if sig == syscall.SIGKILL {
		<-p.done
	}
	return p.name, nil
}

func (f *etcdFailover) restart(ctx context.Context, victim string, sig syscall.Signal) error {
	for _, p := range f.e.procs {
		if p.name != victim {
			continue
		}
		if sig == syscall.SIGSTOP {
			return p.cmd.Process.Signal(syscall.SIGCONT)
		}
		return p.start()
	}
	return fmt.Errorf("no etcd member %s", victim)
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

// scratch makes a temporary directory (the caller removes it) and the
// zerogrid binary to run: -zerogrid's, or one built into the directory.
func scratch(ctx context.Context, cfg config, prefix string) (dir, bin string, err error) {
	if dir, err = os.MkdirTemp("", prefix); err != nil {
		return "", "", err
	}
	bin = cfg.zgBin
	if bin == "" {
		bin = filepath.Join(dir, "zerogrid")
		if err := buildZerogrid(ctx, bin); err != nil {
			os.RemoveAll(dir)
			return "", "", err
		}
	}
	return dir, bin, nil
}
