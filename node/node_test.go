package node_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridtls"
	"github.com/zerogrid/zerogrid/node"
)

// embedded is a cluster of nodes running in this process over real gRPC on
// loopback: the embedding mode, and a check that nothing is global.
type embedded struct {
	t     testing.TB
	peers map[string]string
	dirs  map[string]string
	nodes map[string]*node.Node
	tweak func(id string, cfg *node.Config)
}

func startEmbedded(t testing.TB, n int, tweak ...func(id string, cfg *node.Config)) *embedded {
	t.Helper()
	e := &embedded{t: t, peers: map[string]string{}, dirs: map[string]string{}, nodes: map[string]*node.Node{}}
	if len(tweak) > 0 {
		e.tweak = tweak[0]
	}
	lis := map[string]net.Listener{}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("n%d", i)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis[id], e.peers[id], e.dirs[id] = l, l.Addr().String(), t.TempDir()
	}
	for id := range e.peers {
		e.start(id, lis[id])
	}
	return e
}

func (e *embedded) start(id string, l net.Listener) {
	e.t.Helper()
	if l == nil {
		var err error
		if l, err = net.Listen("tcp", e.peers[id]); err != nil {
			e.t.Fatal(err)
		}
	}
	cfg := node.DefaultConfig()
	cfg.ID, cfg.Listener, cfg.DataDir, cfg.Peers = id, l, e.dirs[id], e.peers
	// In-process clusters on loopback run without TLS; the process-level
	// tests in test/ run every cluster with mutual TLS.
	cfg.Partitions, cfg.Profile, cfg.Insecure = 8, "test", true
	if e.tweak != nil {
		e.tweak(id, &cfg)
	}
	n, err := node.Start(context.Background(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.nodes[id] = n
}

func (e *embedded) stop(id string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.nodes[id].Shutdown(ctx); err != nil {
		e.t.Errorf("shutdown %s: %v", id, err)
	}
	delete(e.nodes, id)
}

// startWithMaps starts an embedded cluster, a client on it, and the named
// maps; all stop when the test ends.
func startWithMaps(t *testing.T, maps []string, tweak ...func(id string, cfg *node.Config)) (*embedded, *client.Client) {
	t.Helper()
	e := startEmbedded(t, 3, tweak...)
	t.Cleanup(e.stopAll)
	c, err := client.Dial(context.Background(), e.addrs()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, m := range maps {
		createMap(t, c, m)
	}
	return e, c
}

// createMap creates a map, retrying while the cluster elects its leaders.
func createMap(t *testing.T, c *client.Client, name string) {
	t.Helper()
	retry(t, 20*time.Second, func(ctx context.Context) error {
		if err := c.CreateMap(ctx, name); err != nil && !errors.Is(err, grid.ErrMapExists) {
			return err
		}
		return nil
	})
}

func (e *embedded) stopAll() {
	for id := range e.nodes {
		e.stop(id)
	}
}

func (e *embedded) addrs() []string {
	var out []string
	for _, a := range e.peers {
		out = append(out, a)
	}
	return out
}

func retry(t *testing.T, budget time.Duration, fn func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(budget)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := fn(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not done within %v: %v", budget, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEmbeddedClusterFailoverAndNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	e := startEmbedded(t, 3)
	c, err := client.Dial(context.Background(), e.addrs()...)
	if err != nil {
		t.Fatal(err)
	}
	createMap(t, c, "m")
	m := c.Map("m")
	for i := 0; i < 100; i++ {
		k := []byte(fmt.Sprintf("key-%03d", i))
		retry(t, 10*time.Second, func(ctx context.Context) error { _, err := m.Put(ctx, k, k); return err })
	}
	// Stop the node that leads the most partitions; everything stays readable
	// and writable on the other two.
	e.stop("n1")
	for i := 0; i < 100; i++ {
		k := []byte(fmt.Sprintf("key-%03d", i))
		retry(t, 20*time.Second, func(ctx context.Context) error {
			v, _, err := m.Get(ctx, k)
			if err == nil && string(v) != string(k) {
				return fmt.Errorf("%s = %q", k, v)
			}
			return err
		})
	}
	retry(t, 20*time.Second, func(ctx context.Context) error { _, err := m.Put(ctx, []byte("during"), []byte("outage")); return err })
	// n1 comes back and catches up: a stale read served by n1 itself sees
	// the write it missed.
	e.start("n1", nil)
	retry(t, 30*time.Second, func(ctx context.Context) error {
		e, err := m.GetEntry(ctx, []byte("during"), client.Stale())
		if err != nil {
			return err
		}
		if e.ServedBy != "n1" {
			return fmt.Errorf("served by %s, want n1", e.ServedBy)
		}
		return nil
	})
	c.Close()
	for id := range e.nodes {
		e.stop(id)
	}
	noGoroutinesLeft(t, before)
}

// noGoroutinesLeft waits until every goroutine started since there were
// before has ended.
func noGoroutinesLeft(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%d goroutines left (started with %d):\n%s", runtime.NumGoroutine(), before, firstStacks(string(buf[:n]), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestEmbeddedTLSNoLeaks runs an in-process cluster with mutual TLS, each
// node's listener split between its Raft server and the server of its
// other services: it serves a client with a certificate, and once every
// node is shut down — n1 with a connection that never began its TLS
// handshake — no goroutine the nodes started is left.
func TestEmbeddedTLSNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	if err := gridtls.NewCA(ca, ""); err != nil {
		t.Fatal(err)
	}
	if err := gridtls.IssueClient(ca, filepath.Join(dir, "client"), "tests", []string{"admin"}); err != nil {
		t.Fatal(err)
	}
	e := startEmbedded(t, 3, func(id string, cfg *node.Config) {
		cfg.Insecure, cfg.TLSDir = false, filepath.Join(dir, id)
		if err := gridtls.IssueNode(ca, cfg.TLSDir, id, []string{cfg.Peers[id]}); err != nil {
			t.Fatal(err)
		}
	})
	c, err := client.DialWith(context.Background(), e.addrs(), client.WithTLSDir(filepath.Join(dir, "client")))
	if err != nil {
		t.Fatal(err)
	}
	createMap(t, c, "m")
	m := c.Map("m")
	for i := range 20 {
		k := []byte(fmt.Sprintf("key-%02d", i))
		retry(t, 10*time.Second, func(ctx context.Context) error { _, err := m.Put(ctx, k, k); return err })
		retry(t, 10*time.Second, func(ctx context.Context) error {
			v, _, err := m.Get(ctx, k)
			if err == nil && string(v) != string(k) {
				return fmt.Errorf("%s = %q", k, v)
			}
			return err
		})
	}
	stuck, err := net.Dial("tcp", e.peers["n1"])
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	c.Close()
	e.stopAll()
	noGoroutinesLeft(t, before)
}

func firstStacks(all string, n int) string {
	parts := strings.Split(all, "\n\n")
	if len(parts) > n {
		parts = parts[:n]
	}
	return strings.Join(parts, "\n\n")
}

func TestConfigValidateReportsEverything(t *testing.T) {
	cfg := node.Config{Partitions: 0, Replicas: 9, Profile: "huge", Engine: "rocks", Limits: grid.DefaultLimits(), MaxRequestMemory: 1 << 20}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("empty config accepted")
	}
	for _, want := range []string{"node id", "listen address", "data dir", "peers", "partitions", "replicas", "profile", "engine", "TLS directory", "request memory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("validation error does not mention %s: %v", want, err)
		}
	}
	if !errors.Is(err, grid.ErrBadConfig) {
		t.Errorf("%v does not match grid.ErrBadConfig", err)
	}
	if _, err := node.ParsePeers("n1=a:1,n1=b:2"); err == nil {
		t.Error("duplicate peer id accepted")
	}
	if _, err := node.ParsePeers("n1"); err == nil {
		t.Error("peer without address accepted")
	}
}

// TestEmbeddedRESPNoLeaks: every node of an in-process cluster serves the
// Redis front door; a SET through one node is read through the others
// (forwarded to the key's leader), and once the nodes are shut down — with
// one connection idle and one in the middle of a command — no goroutine
// the front doors started is left.
func TestEmbeddedRESPNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	e, c := startWithMaps(t, []string{"redis"}, func(_ string, cfg *node.Config) { cfg.RESPListen = "127.0.0.1:0" })
	defer c.Close()
	dial := func(n *node.Node) (net.Conn, *bufio.Reader) {
		conn, err := net.Dial("tcp", n.RESPAddr())
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		return conn, bufio.NewReader(conn)
	}
	do := func(conn net.Conn, r *bufio.Reader, args ...string) string {
		t.Helper()
		fmt.Fprintf(conn, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(conn, "$%d\r\n%s\r\n", len(a), a)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "$") && line != "$-1\r\n" {
			body, _ := r.ReadString('\n')
			return strings.TrimSpace(body)
		}
		return strings.TrimSpace(line)
	}
	var conns []net.Conn
	var readers []*bufio.Reader
	for _, id := range []string{"n1", "n2", "n3"} {
		conn, r := dial(e.nodes[id])
		conns, readers = append(conns, conn), append(readers, r)
		defer conn.Close()
	}
	for i := range 10 {
		k, v := fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)
		retry(t, 20*time.Second, func(context.Context) error {
			if got := do(conns[0], readers[0], "SET", k, v); got != "+OK" {
				return fmt.Errorf("SET %s: %s", k, got)
			}
			return nil
		})
		for j := 1; j < 3; j++ {
			if got := do(conns[j], readers[j], "GET", k); got != v {
				t.Fatalf("GET %s through connection %d: %q, want %q", k, j, got, v)
			}
		}
	}
	fmt.Fprint(conns[1], "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nhalf") // in the middle of a command
	c.Close()
	e.stopAll()
	noGoroutinesLeft(t, before)
}
