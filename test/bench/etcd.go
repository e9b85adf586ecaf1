package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdStore is a 3-member etcd cluster of real processes, with etcd's
// defaults (fsync on every commit), and one clientv3.Client shared by every
// workload goroutine.
type etcdStore struct {
	procs  []*etcdProc
	client *clientv3.Client
}

var _ store = (*etcdStore)(nil)

type etcdProc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	name    string
	binary  string
	args    []string
	logPath string
	client  string // client URL
}

// start runs the member's process (again, after a kill: same data dir).
func (p *etcdProc) start() error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.binary, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C is ours to pass on
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start etcd %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() { // owned: ends when the process exits; Close waits for it
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	return nil
}

// startEtcd starts three members on loopback, each with its own data dir
// under dir, and waits until a write succeeds.
func startEtcd(ctx context.Context, binary, dir string) (*etcdStore, error) {
	const n = 3
	type member struct{ name, client, peer string }
	var ms []member
	var initial []string
	for i := 1; i <= n; i++ {
		c, err := freePort()
		if err != nil {
			return nil, err
		}
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		m := member{name: fmt.Sprintf("e%d", i), client: "http://" + c, peer: "http://" + p}
		ms = append(ms, m)
		initial = append(initial, m.name+"="+m.peer)
	}
	e := &etcdStore{}
	for _, m := range ms {
		p := &etcdProc{name: m.name, binary: binary, logPath: filepath.Join(dir, m.name+".log"), client: m.client, args: []string{
			"--name", m.name,
			"--data-dir", filepath.Join(dir, m.name),
			"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
			"--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new", "--initial-cluster-token", "zerogrid-bench",
			"--logger", "zap", "--log-outputs", "stderr",
		}}
		if err := p.start(); err != nil {
			e.Close()
			return nil, err
		}
		e.procs = append(e.procs, p)
	}
	var eps []string
	for _, m := range ms {
		eps = append(eps, strings.TrimPrefix(m.client, "http://"))
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	e.client = cli
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		pctx, pcancel := context.WithTimeout(wctx, 2*time.Second)
		_, err := cli.Put(pctx, "zerogrid-bench/ready", "1")
		pcancel()
		if err == nil {
			break
		}
		for _, p := range e.procs {
			select {
			case <-p.done:
				e.Close()
				return nil, fmt.Errorf("an etcd member exited during start (see the logs in %s)", dir)
			default:
			}
		}
		select {
		case <-wctx.Done():
			e.Close()
			return nil, fmt.Errorf("etcd cluster not ready: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	return e, nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func etcdVersion(binary string) string {
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(strings.TrimPrefix(first, "etcd Version:"))
}

var errEtcdNotFound = errors.New("etcd: key not found")

func (e *etcdStore) Name() string { return "etcd" }

func (e *etcdStore) Put(ctx context.Context, key, value []byte) error {
	_, err := e.client.Put(ctx, string(key), string(value))
	return err
}

func (e *etcdStore) Get(ctx context.Context, key []byte) error {
	return e.get(ctx, key)
}

func (e *etcdStore) StaleGet(ctx context.Context, key []byte) error {
	return e.get(ctx, key, clientv3.WithSerializable())
}

func (e *etcdStore) get(ctx context.Context, key []byte, opts ...clientv3.OpOption) error {
	r, err := e.client.Get(ctx, string(key), opts...)
	if err != nil {
		return err
	}
	if len(r.Kvs) != 1 {
		return fmt.Errorf("%w: %x", errEtcdNotFound, key)
	}
	return nil
}

func (e *etcdStore) PIDs() []int {
	out := make([]int, 0, len(e.procs))
	for _, p := range e.procs {
		out = append(out, p.cmd.Process.Pid)
	}
	return out
}

// Close stops every member with SIGTERM (SIGKILL after 30 s) and waits.
func (e *etcdStore) Close() {
	if e.client != nil {
		_ = e.client.Close()
	}
	var wg sync.WaitGroup
	for _, p := range e.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}()
	}
	wg.Wait()
}

// leader returns the index in procs of the member that leads, as the
// members that answer see it.
func (e *etcdStore) leader(ctx context.Context) (int, error) {
	for _, p := range e.procs {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := e.client.Status(sctx, strings.TrimPrefix(p.client, "http://"))
		cancel()
		if err != nil || st.Leader == 0 {
			continue
		}
		for j, q := range e.procs {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			qs, err := e.client.Status(sctx, strings.TrimPrefix(q.client, "http://"))
			cancel()
			if err == nil && qs.Header.MemberId == st.Leader {
				return j, nil
			}
		}
	}
	return 0, errors.New("etcd: no member knows a leader")
}
