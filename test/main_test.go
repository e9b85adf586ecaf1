package test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid/gridtls"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

var long = flag.Bool("long", false, "run the long versions of the fault tests")

// binary is the zerogrid binary built once for all tests.
var binary string

// The tests' cluster CA and a client certificate (role admin) from it:
// every cluster a test starts gets its node certificates from this CA, and
// the CLI processes tests run find the client's in $ZEROGRID_TLS_DIR.
var caDir, clientTLSDir string

// clientCreds are the transport credentials of a raw gRPC connection to a
// node of the tests' clusters, with the client certificate.
var clientCreds grpc.DialOption

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "zerogrid-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	caDir, clientTLSDir = filepath.Join(dir, "ca"), filepath.Join(dir, "client")
	if err := gridtls.NewCA(caDir, "zerogrid tests CA"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := gridtls.IssueClient(caDir, clientTLSDir, "tests", []string{"admin"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("ZEROGRID_TLS_DIR", clientTLSDir)
	mat, err := gridtls.LoadClient(clientTLSDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	clientCreds = grpc.WithTransportCredentials(credentials.NewTLS(mat.ClientConfig()))
	binary = filepath.Join(dir, "zerogrid")
	cmd := exec.Command("go", "build", "-o", binary, "../cmd/zerogrid")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build zerogrid:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startCluster starts a 3-node cluster of real processes and a client, and
// creates the named maps. Everything stops when the test ends.
func startCluster(t testing.TB, partitions int, maps ...string) (*localcluster.Cluster, *client.Client) {
	t.Helper()
	return startClusterArgs(t, partitions, nil, maps...)
}

// startClusterArgs is startCluster with extra flags for every node.
func startClusterArgs(t testing.TB, partitions int, extra []string, maps ...string) (*localcluster.Cluster, *client.Client) {
	t.Helper()
	return startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: partitions, Replicas: 3, ExtraArgs: extra}, maps...)
}

// startClusterConfig starts the cluster cfg describes (binary, directory and
// profile filled in), a client, and the named maps.
func startClusterConfig(t testing.TB, cfg localcluster.Config, maps ...string) (*localcluster.Cluster, *client.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	cfg.Binary = binary
	if cfg.Profile == "" {
		cfg.Profile = "test"
	}
	if !cfg.Insecure && cfg.CADir == "" {
		cfg.CADir = caDir
	}
	lc, err := localcluster.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lc.Stop()
		if t.Failed() {
			keep := filepath.Join(os.TempDir(), "zerogrid-failed-"+strings.ReplaceAll(t.Name(), "/", "_"))
			_ = os.MkdirAll(keep, 0o755)
			for _, id := range lc.IDs() {
				if b, err := os.ReadFile(lc.LogPath(id)); err == nil {
					_ = os.WriteFile(filepath.Join(keep, id+".log"), b, 0o644)
					t.Logf("---- log of %s (last 3000 bytes; whole log kept in %s) ----\n%s", id, keep, tail(b, 3000))
				}
			}
		}
	})
	c, err := client.DialWith(ctx, lc.Addrs(), client.WithTLSDir(lc.ClientTLSDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, m := range maps {
		eventually(t, 30*time.Second, func() error {
			mctx, mcancel := context.WithTimeout(ctx, 5*time.Second)
			defer mcancel()
			err := c.CreateMap(mctx, m)
			if err != nil && !errors.Is(err, client.ErrMapExists) {
				return err
			}
			return nil
		})
	}
	return lc, c
}

// dialCluster is client.DialWith with the tests' client certificate.
func dialCluster(ctx context.Context, addrs []string, opts ...client.Option) (*client.Client, error) {
	return client.DialWith(ctx, addrs, append([]client.Option{client.WithTLSDir(clientTLSDir)}, opts...)...)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// eventually retries fn until it returns nil or the budget runs out.
func eventually(t testing.TB, budget time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(budget)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", budget, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
