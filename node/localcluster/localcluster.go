// Package localcluster runs a zerogrid cluster as real `zerogrid node`
// processes on loopback ports, with data under one directory. The demo uses
// it, and so do the tests in test/ that kill and restart processes.
package localcluster

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

	"github.com/zerogrid/zerogrid/grid/gridtls"
)

// Config describes the cluster.
type Config struct {
	Binary     string // path of the zerogrid binary
	Dir        string // data and logs go under it, one folder per node
	Nodes      int
	Partitions int
	Replicas   int
	Profile    string   // node --profile
	JoinToken  string   // the join token of every node (passed in a file): founders admit joiners presenting it
	ExtraArgs  []string // appended to every node's command line
	// FounderArgs, if set, gives each founding node arguments of its own
	// (e.g. a zone label); joined nodes get theirs from Join.
	FounderArgs func(id string) []string
	// Insecure runs the nodes without TLS (--insecure). By default every
	// node gets a certificate from a cluster CA (CADir, or one created
	// under Dir/tls/ca) and clients connect with ClientTLSDir.
	Insecure bool
	// Ops gives every node an ops listener (--ops-listen) on a loopback
	// port of its own: /metrics, /healthz, /readyz (see OpsAddr).
	Ops bool
	// RESP gives every node a Redis front door (--resp-listen) on a port of
	// its own: RESPAddr.
	RESP bool
	// CADir is a CA directory (ca.crt, ca.key: 'zerogrid cert ca') to issue
	// the cluster's certificates from; empty: one of its own.
	CADir string
}

// Cluster is a set of node processes. Its methods are safe for concurrent use.
type Cluster struct {
	cfg      Config
	founders int // the first founders ids found the cluster (--peers); later ones joined

	mu    sync.Mutex
	ids   []string
	addrs []string
	ops   map[string]string   // ops listener addresses, when Config.Ops
	resp  map[string]string   // Redis front door addresses, when Config.RESP
	extra map[string][]string // per-node arguments of joined nodes
	procs map[string]*proc
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start picks free loopback ports and starts every node.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Nodes <= 0 || cfg.Binary == "" || cfg.Dir == "" {
		return nil, errors.New("localcluster: need a binary, a directory and at least one node")
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("localcluster: %w", err)
	}
	if !cfg.Insecure {
		if cfg.CADir == "" {
			cfg.CADir = filepath.Join(cfg.Dir, "tls", "ca")
			if _, err := os.Stat(filepath.Join(cfg.CADir, gridtls.CAKey)); errors.Is(err, os.ErrNotExist) {
				if err := gridtls.NewCA(cfg.CADir, "zerogrid localcluster CA"); err != nil {
					return nil, fmt.Errorf("localcluster: %w", err)
				}
			}
		}
		if err := gridtls.IssueClient(cfg.CADir, filepath.Join(cfg.Dir, "tls", "client"), "localcluster", []string{"admin"}); err != nil {
			return nil, fmt.Errorf("localcluster: %w", err)
		}
	}
	if cfg.JoinToken != "" {
		if err := os.WriteFile(filepath.Join(cfg.Dir, "join-token"), []byte(cfg.JoinToken+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("localcluster: %w", err)
		}
	}
	c := &Cluster{cfg: cfg, founders: cfg.Nodes, procs: map[string]*proc{}, extra: map[string][]string{}, ops: map[string]string{}, resp: map[string]string{}}
	for i := 1; i <= cfg.Nodes; i++ {
		addr, err := freePort()
		if err != nil {
			return nil, err
		}
		c.ids = append(c.ids, fmt.Sprintf("n%d", i))
		c.addrs = append(c.addrs, addr)
	}
	for _, id := range c.ids {
		if err := c.StartNode(ctx, id); err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// freePort asks the kernel for a free loopback port.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("localcluster: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Join starts a new node that joins the running cluster through the
// founders (--join, --join-token), with extra arguments (e.g. labels). Its
// id is n<k> for the next k unless id is given.
func (c *Cluster) Join(ctx context.Context, id string, extra ...string) (string, error) {
	addr, err := freePort()
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	if id == "" {
		id = fmt.Sprintf("n%d", len(c.ids)+1)
	}
	c.ids = append(c.ids, id)
	c.addrs = append(c.addrs, addr)
	c.extra[id] = extra
	c.mu.Unlock()
	return id, c.StartNode(ctx, id)
}

// OpsAddr is node id's ops listener address ("" without Config.Ops).
func (c *Cluster) OpsAddr(id string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ops[id]
}

// RESPAddr is node id's Redis front door address ("" without Config.RESP).
func (c *Cluster) RESPAddr(id string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.resp[id]
}

// listener returns the address of node id's listener of a kind (ops,
// resp), picking a free port the first time; a restart keeps it.
func listener(addrs map[string]string, id string) (string, error) {
	if addrs[id] == "" {
		a, err := freePort()
		if err != nil {
			return "", err
		}
		addrs[id] = a
	}
	return addrs[id], nil
}

// IDs lists node ids (n1, n2, ...).
func (c *Cluster) IDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ids...)
}

// Addrs lists node addresses in id order.
func (c *Cluster) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.addrs...)
}

// Addr returns a node's address.
func (c *Cluster) Addr(id string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addrLocked(id)
}

func (c *Cluster) addrLocked(id string) string {
	for i, x := range c.ids {
		if x == id {
			return c.addrs[i]
		}
	}
	return ""
}

// Peers is the --peers flag value: the founders.
func (c *Cluster) Peers() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peersLocked()
}

func (c *Cluster) peersLocked() string {
	parts := make([]string, c.founders)
	for i := range parts {
		parts[i] = c.ids[i] + "=" + c.addrs[i]
	}
	return strings.Join(parts, ",")
}

// TLSDir is a node's certificate directory ("" when insecure).
func (c *Cluster) TLSDir(id string) string {
	if c.cfg.Insecure {
		return ""
	}
	return filepath.Join(c.cfg.Dir, "tls", id)
}

// ClientTLSDir holds a client certificate (roles: admin) for the cluster:
// pass it to client.WithTLSDir or the CLI's --tls-dir. "" when insecure.
func (c *Cluster) ClientTLSDir() string {
	if c.cfg.Insecure {
		return ""
	}
	return filepath.Join(c.cfg.Dir, "tls", "client")
}

// DataDir is a node's data directory.
func (c *Cluster) DataDir(id string) string { return filepath.Join(c.cfg.Dir, id) }

// LogPath is the file a node's output goes to.
func (c *Cluster) LogPath(id string) string { return filepath.Join(c.cfg.Dir, id+".log") }

// StartNode starts (or restarts) one node process.
func (c *Cluster) StartNode(ctx context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.procs[id]; ok {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("localcluster: node %s is already running", id)
		}
	}
	addr := c.addrLocked(id)
	if addr == "" {
		return fmt.Errorf("localcluster: no node %s", id)
	}
	args := []string{"node", "--id", id, "--listen", addr, "--data-dir", c.DataDir(id)}
	for _, l := range []struct {
		on    bool
		addrs map[string]string
		flag  string
	}{{c.cfg.Ops, c.ops, "--ops-listen"}, {c.cfg.RESP, c.resp, "--resp-listen"}} {
		if !l.on {
			continue
		}
		a, err := listener(l.addrs, id)
		if err != nil {
			return err
		}
		args = append(args, l.flag, a)
	}
	if extra, joined := c.extra[id]; joined {
		args = append(args, "--join", strings.Join(c.addrs[:c.founders], ","))
		args = append(args, extra...)
	} else {
		args = append(args, "--peers", c.peersLocked())
		if c.cfg.FounderArgs != nil {
			args = append(args, c.cfg.FounderArgs(id)...)
		}
	}
	if c.cfg.JoinToken != "" {
		args = append(args, "--join-token-file", filepath.Join(c.cfg.Dir, "join-token"))
	}
	if c.cfg.Insecure {
		args = append(args, "--insecure")
	} else {
		dir := c.TLSDir(id)
		if _, err := os.Stat(filepath.Join(dir, gridtls.NodeCert)); errors.Is(err, os.ErrNotExist) {
			host, _, _ := net.SplitHostPort(addr)
			if err := gridtls.IssueNode(c.cfg.CADir, dir, id, []string{host}); err != nil {
				return fmt.Errorf("localcluster: %w", err)
			}
		}
		args = append(args, "--tls-dir", dir)
	}
	if c.cfg.Partitions > 0 {
		args = append(args, "--partitions", fmt.Sprint(c.cfg.Partitions))
	}
	if c.cfg.Replicas > 0 {
		args = append(args, "--replicas", fmt.Sprint(c.cfg.Replicas))
	}
	if c.cfg.Profile != "" {
		args = append(args, "--profile", c.cfg.Profile)
	}
	args = append(args, c.cfg.ExtraArgs...)
	logf, err := os.OpenFile(c.LogPath(id), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("localcluster: node log: %w", err)
	}
	cmd := exec.Command(c.cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C to the parent does not reach the nodes
	// directly; the parent stops them in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("localcluster: start %s: %w", id, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { // owned: ends when the process exits; Stop waits for it
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	c.procs[id] = p
	return waitListening(ctx, addr, p.done)
}

// waitListening waits until addr accepts connections or the process exits.
func waitListening(ctx context.Context, addr string, exited <-chan struct{}) error {
	for {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("localcluster: node at %s exited during start (see its log)", addr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Kill sends SIGKILL to a node and waits for it to die.
func (c *Cluster) Kill(id string) error { return c.signal(id, syscall.SIGKILL) }

// Terminate sends SIGTERM (a clean shutdown) and waits.
func (c *Cluster) Terminate(id string) error { return c.signal(id, syscall.SIGTERM) }

func (c *Cluster) signal(id string, sig syscall.Signal) error {
	c.mu.Lock()
	p, ok := c.procs[id]
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("localcluster: no node %s", id)
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("localcluster: node %s ignored %v for 30s and was killed", id, sig)
	}
}

// Running reports whether a node's process is alive.
func (c *Cluster) Running(id string) bool {
	c.mu.Lock()
	p, ok := c.procs[id]
	c.mu.Unlock()
	if !ok {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// PID is the process id of a running node, 0 if it is not running (for
// reading its memory from /proc/PID/status).
func (c *Cluster) PID(id string) int {
	if !c.Running(id) {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[id].cmd.Process.Pid
}

// Stop terminates every node and waits for all of them.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, id := range c.IDs() {
		if !c.Running(id) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.Terminate(id)
		}()
	}
	wg.Wait()
}
