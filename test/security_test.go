package test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/grid/gridtls"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestMutualTLS checks who gets into a cluster running with certificates
// (the default): nobody without a certificate from the cluster's CA; a
// client certificate not into the nodes' own services (Raft, reports,
// joins); a node certificate not as another node; a node not with another
// node's certificate. A certificate replaced on disk is served without a
// restart, and the data written before is all there.
func TestMutualTLS(t *testing.T) {
	lc, c := startCluster(t, 4, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.Map("kv").Put(ctx, []byte("k"), []byte("v")); err != nil {
		t.Fatalf("put with the client certificate: %v", err)
	}
	addr := lc.Addr("n1")
	call := func(creds credentials.TransportCredentials, fn func(context.Context, *grpc.ClientConn) error) error {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		return fn(cctx, conn)
	}
	readAll := func(ctx context.Context, cc *grpc.ClientConn) error {
		s, err := gridpb.NewBackupClient(cc).ReadPartition(ctx, &gridpb.ReadPartitionRequest{Partition: 0})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	report := func(asNode string) func(context.Context, *grpc.ClientConn) error {
		return func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := gridpb.NewClusterClient(cc).Report(ctx, &gridpb.ReportRequest{NodeId: asNode, Addr: lc.Addr(asNode), CapsJson: []byte("{}"), LoadJson: []byte("{}")})
			return err
		}
	}
	vote := func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := gridpb.NewRaftClient(cc).RequestVote(ctx, &gridpb.RaftRequestVoteRequest{Group: 0, Term: 1 << 40, Candidate: []byte("intruder")})
		return err
	}
	wantCode := func(what string, err error, codes ...codes.Code) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: accepted", what)
		}
		for _, c := range codes {
			if status.Code(err) == c {
				t.Logf("%s: refused: %v", what, err)
				return
			}
		}
		t.Fatalf("%s: refused with %v, want %v", what, err, codes)
	}

	// No certificate: no connection at all, whatever the call.
	wantCode("a backup read over plain TCP", call(insecure.NewCredentials(), readAll), codes.Unavailable)
	wantCode("a Raft vote over plain TCP", call(insecure.NewCredentials(), vote), codes.Unavailable)
	noCert := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}) // a TLS client that shows no certificate
	wantCode("a backup read with TLS but no certificate", call(noCert, readAll), codes.Unauthenticated)

	// A certificate from another CA.
	other := t.TempDir()
	if err := gridtls.NewCA(filepath.Join(other, "ca"), "someone else"); err != nil {
		t.Fatal(err)
	}
	if err := gridtls.IssueClient(filepath.Join(other, "ca"), filepath.Join(other, "client"), "mallory", []string{"admin"}); err != nil {
		t.Fatal(err)
	}
	m, err := gridtls.LoadClient(filepath.Join(other, "client"))
	if err != nil {
		t.Fatal(err)
	}
	foreign := m.ClientConfig()
	foreign.RootCAs = nil
	foreign.InsecureSkipVerify = true // trust the server blindly: only the server's check is tested
	wantCode("a backup read with another CA's certificate", call(credentials.NewTLS(foreign), readAll), codes.Unavailable)
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
	defer dcancel()
	if _, err := client.DialWith(dctx, lc.Addrs(), client.WithTLSDir(filepath.Join(other, "client"))); err == nil {
		t.Fatal("a client with another CA's certificate (and trusting only that CA) connected")
	}

	// The cluster's client certificate: its own calls pass, the nodes' do not.
	mine := credentials.NewTLS(mustLoad(t, gridtls.LoadClient, clientTLSDir).ClientConfig())
	// (Authorized: it runs, or n1 answers that another node leads partition 0.)
	if err := call(mine, readAll); err != nil && status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("a backup read with the client certificate: %v", err)
	}
	wantCode("a Raft vote with a client certificate", call(mine, vote), codes.PermissionDenied)
	// Nor on a connection asking for Raft's (ALPN), refused before its
	// message is read.
	mineRaft := mustLoad(t, gridtls.LoadClient, clientTLSDir).ClientConfig()
	mineRaft.NextProtos = []string{gridtls.ALPNRaft}
	wantCode("a Raft vote with a client certificate on a Raft connection", call(credentials.NewTLS(mineRaft), vote), codes.PermissionDenied)
	wantCode("a load report with a client certificate", call(mine, report("n1")), codes.PermissionDenied)

	// Roles: each client certificate gets what its roles grant, and a
	// refused call changes nothing.
	certs := t.TempDir()
	asRoles := func(name string, roles ...string) *client.Client {
		if err := gridtls.IssueClient(caDir, filepath.Join(certs, name), name, roles); err != nil {
			t.Fatal(err)
		}
		rc, err := client.DialWith(ctx, lc.Addrs(), client.WithTLSDir(filepath.Join(certs, name)))
		if err != nil {
			t.Fatalf("dial as %s: %v", name, err)
		}
		t.Cleanup(func() { rc.Close() })
		return rc
	}
	reader, writer, nobody := asRoles("reader", "read"), asRoles("writer", "write"), asRoles("nobody")
	if v, _, err := reader.Map("kv").Get(ctx, []byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("read with the read role: %q, %v", v, err)
	}
	if _, err := reader.Map("kv").Put(ctx, []byte("k"), []byte("by reader")); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("put with the read role only: %v", err)
	}
	if _, _, err := writer.Map("kv").Get(ctx, []byte("k")); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("get with the write role only: %v", err)
	}
	if _, err := writer.Map("kv").Put(ctx, []byte("k2"), []byte("by writer")); err != nil {
		t.Fatalf("put with the write role: %v", err)
	}
	if err := writer.CreateMap(ctx, "other"); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("create a map with the write role only: %v", err)
	}
	if _, _, err := nobody.Map("kv").Get(ctx, []byte("k")); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("get without roles: %v", err)
	}
	if v, _, err := c.Map("kv").Get(ctx, []byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("after the refused put: %q, %v", v, err)
	}
	// Shipping code needs the compute role; the CLI says so.
	cli := exec.CommandContext(ctx, binary, "job", "run", "--map", "kv", "--agg", "count", "--addr", addr)
	cli.Env = append(os.Environ(), "ZEROGRID_TLS_DIR="+filepath.Join(certs, "writer"))
	if out, err := cli.CombinedOutput(); err == nil || !strings.Contains(string(out), "needs the compute role") {
		t.Fatalf("a job run with the write role only (%v):\n%s", err, out)
	}

	// The audit log has the refusals and the admin's action, with who
	// and from where, on disk and through zerogrid audit.
	if err := c.CreateMap(ctx, "audited"); err != nil {
		t.Fatal(err)
	}
	runCLI(t, ctx, "job", "run", "--map", "kv", "--agg", "count", "--addr", addr) // as tests, an admin
	eventually(t, 10*time.Second, func() error {
		out := runCLI(t, ctx, "audit", "--limit", "1000", "--addr", strings.Join(lc.Addrs(), ","))
		for _, want := range []string{
			`client:reader`, `/zerogrid.v1.KV/Put`, `PermissionDenied: grid: permission denied: /zerogrid.v1.KV/Put needs the write role`,
			`client:writer`, `/zerogrid.v1.Compute/Submit`, `job on map "kv": agg "count"`, `script sha256:`,
			`client:tests`, `create map "audited"`,
		} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("zerogrid audit lacks %q:\n%s", want, out)
			}
		}
		return nil
	})
	var onDisk int
	for _, id := range lc.IDs() {
		b, _ := os.ReadFile(filepath.Join(lc.DataDir(id), "audit.log"))
		onDisk += strings.Count(string(b), "\n")
	}
	if onDisk == 0 {
		t.Fatal("no audit record on disk")
	}

	// An expired certificate is refused; so is a revoked one, at once, on
	// every node it is revoked on, while other certificates work on.
	if err := gridtls.IssueClientFor(caDir, filepath.Join(certs, "expired"), "expired", []string{"admin"}, -time.Hour); err != nil {
		t.Fatal(err)
	}
	expired := credentials.NewTLS(mustLoad(t, gridtls.LoadClient, filepath.Join(certs, "expired")).ClientConfig())
	wantCode("a backup read with an expired certificate", call(expired, readAll), codes.Unavailable)
	if err := gridtls.IssueClient(caDir, filepath.Join(certs, "leaver"), "leaver", []string{"admin"}); err != nil {
		t.Fatal(err)
	}
	leaver := func() credentials.TransportCredentials {
		return credentials.NewTLS(mustLoad(t, gridtls.LoadClient, filepath.Join(certs, "leaver")).ClientConfig())
	}
	if err := call(leaver(), readAll); err != nil && status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("the leaver's certificate before revocation: %v", err)
	}
	var nodeDirs []string
	for _, id := range lc.IDs() {
		nodeDirs = append(nodeDirs, lc.TLSDir(id))
	}
	runCLI(t, ctx, "cert", "revoke", "--cert", filepath.Join(certs, "leaver", gridtls.ClientCert), "--out", strings.Join(nodeDirs, ","))
	wantCode("a backup read with a revoked certificate", call(leaver(), readAll), codes.Unavailable)
	if err := call(mine, readAll); err != nil && status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("another certificate after a revocation: %v", err)
	}

	// Bearer tokens signed by the CA: roles as certificates have them; a
	// token from another CA, a garbled one and a revoked one are refused.
	caOnly := filepath.Join(certs, "ca-only")
	if err := os.MkdirAll(caOnly, 0o700); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(caDir, gridtls.CACert))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(caOnly, gridtls.CACert), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	runCLI(t, ctx, "cert", "token", "--ca", caDir, "--name", "dashboard", "--roles", "read", "--out", filepath.Join(certs, "dashboard.token"))
	withToken := func(file string) *client.Client {
		tc, err := client.DialWith(ctx, lc.Addrs(), client.WithTLSDir(caOnly), client.WithTokenFile(file))
		if err != nil {
			t.Fatalf("dial with %s: %v", file, err)
		}
		t.Cleanup(func() { tc.Close() })
		return tc
	}
	dash := withToken(filepath.Join(certs, "dashboard.token"))
	if v, _, err := dash.Map("kv").Get(ctx, []byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("read with a read token: %q, %v", v, err)
	}
	if _, err := dash.Map("kv").Put(ctx, []byte("k"), []byte("by token")); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("put with a read token: %v", err)
	}
	forged, err := gridtls.IssueToken(filepath.Join(other, "ca"), "dashboard", []string{"admin"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"forged": forged, "garbled": forged[:len(forged)-8] + "AAAAAAAA", "not a token": "hello"} {
		f := filepath.Join(certs, strings.ReplaceAll(name, " ", "-")+".token")
		if err := os.WriteFile(f, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		call := func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := gridpb.NewAdminClient(cc).GetTable(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok), &gridpb.GetTableRequest{})
			return err
		}
		caCreds := credentials.NewTLS(mustLoad(t, gridtls.LoadCA, caOnly).ClientConfig())
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(caCreds))
		if err != nil {
			t.Fatal(err)
		}
		err = call(ctx, conn)
		conn.Close()
		wantCode("a "+name+" token", err, codes.Unauthenticated)
	}
	runCLI(t, ctx, "cert", "revoke", "--cert", filepath.Join(certs, "dashboard.token"), "--out", strings.Join(nodeDirs, ","))
	if _, _, err := dash.Map("kv").Get(ctx, []byte("k")); status.Code(errors.Unwrap(err)) != codes.Unauthenticated && !strings.Contains(fmt.Sprint(err), "revoked") {
		t.Fatalf("read with a revoked token: %v", err)
	}

	// A node's certificate does not speak for another node.
	asN2 := credentials.NewTLS(mustLoad(t, gridtls.LoadNode, lc.TLSDir("n2")).ClientConfig())
	wantCode("n2's certificate reporting for n3", call(asN2, report("n3")), codes.PermissionDenied)
	if err := call(asN2, report("n2")); err != nil {
		t.Fatalf("n2 reporting for itself: %v", err)
	}

	// Nor in Raft: n2's certificate may not vote as n3. (A node's Raft
	// connections ask for ALPN zerogrid-raft; others are not served Raft.)
	voteAs := func(id string) func(context.Context, *grpc.ClientConn) error {
		return func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := gridpb.NewRaftClient(cc).RequestVote(ctx, &gridpb.RaftRequestVoteRequest{
				Group: 0, Header: &gridpb.RaftHeader{ProtocolVersion: 3, Id: []byte(id), Addr: []byte(lc.Addr(id))}, Term: 1, Candidate: []byte(lc.Addr(id))})
			return err
		}
	}
	wantCode("n2's certificate voting as n2 on a connection not asking for Raft's", call(asN2, voteAs("n2")), codes.Unimplemented)
	asN2 = raftCreds(t, lc.TLSDir("n2"))
	wantCode("n2's certificate voting as n3", call(asN2, voteAs("n3")), codes.PermissionDenied)
	if err := call(asN2, voteAs("n2")); err != nil {
		t.Fatalf("n2 asking for a (stale) vote as itself: %v", err)
	}

	// A node started with another node's certificate refuses to start.
	cmd := exec.CommandContext(ctx, binary, "node", "--id", "n9", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--peers", "n9=127.0.0.1:1", "--replicas", "1", "--partitions", "1", "--tls-dir", lc.TLSDir("n1"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `not for node "n9"`) {
		t.Fatalf("a node with n1's certificate started as n9 (%v):\n%s", err, out)
	}
	// A node without certificates (and without --insecure) says what it needs.
	cmd = exec.CommandContext(ctx, binary, "node", "--id", "n9", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--peers", "n9=127.0.0.1:1", "--replicas", "1", "--partitions", "1")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "TLS directory is required") {
		t.Fatalf("a node without certificates started (%v):\n%s", err, out)
	}
	// So does the CLI.
	cmd = exec.CommandContext(ctx, binary, "get", "kv", "k", "--addr", addr)
	cmd.Env = append(os.Environ(), "ZEROGRID_TLS_DIR=")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "--tls-dir") {
		t.Fatalf("the CLI without certificates (%v):\n%s", err, out)
	}

	// A certificate replaced on disk is served to new connections without
	// a restart.
	before := serverSerial(t, addr)
	if err := gridtls.IssueNode(caDir, lc.TLSDir("n1"), "n1", []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		if serverSerial(t, addr) == before {
			return errors.New("n1 still serves its old certificate")
		}
		return nil
	})
	c2, err := dialCluster(ctx, []string{addr})
	if err != nil {
		t.Fatalf("dial after the certificate was replaced: %v", err)
	}
	defer c2.Close()
	if v, _, err := c2.Map("kv").Get(ctx, []byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("read after the certificate was replaced: %q, %v", v, err)
	}
}

// TestInsecureClusterSaysSo runs a cluster with --insecure: it works for a
// client without certificates, status says so, and every node logs the
// warning.
func TestInsecureClusterSaysSo(t *testing.T) {
	lc, _ := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: 2, Replicas: 3, Insecure: true}, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, lc.Addrs()...) // no certificate
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Map("kv").Put(ctx, []byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, binary, "status", "--insecure", "--addr", strings.Join(lc.Addrs(), ","))
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "INSECURE: n1, n2, n3 run without TLS") {
		t.Errorf("status does not say the nodes run insecure (%v):\n%s", err, out)
	}
	for _, id := range lc.IDs() {
		b, err := os.ReadFile(lc.LogPath(id))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "INSECURE") {
			t.Errorf("%s does not warn that it runs insecure", id)
		}
	}
}

// mustLoad reads a TLS directory with load (gridtls.LoadClient or LoadNode).
func mustLoad(t *testing.T, load func(string) (*gridtls.Material, error), dir string) *gridtls.Material {
	t.Helper()
	m, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// serverSerial is the serial number of the certificate addr serves.
func serverSerial(t *testing.T, addr string) string {
	t.Helper()
	cfg := mustLoad(t, gridtls.LoadClient, clientTLSDir).ClientConfig()
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestClientStreamCap opens streams from one client certificate to one
// node up to its --max-client-streams cap: the next is refused with
// ResourceExhausted (client.ErrTooManyRequests), and once one closes a new
// one is accepted; another client is not affected.
func TestClientStreamCap(t *testing.T) {
	lc, _ := startClusterArgs(t, 1, []string{"--max-client-streams", "3"}, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := grpc.NewClient(lc.Addr("n1"), clientCreds)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	open := func(creds grpc.DialOption) (context.CancelFunc, error) {
		cc := conn
		if creds != nil {
			if cc, err = grpc.NewClient(lc.Addr("n1"), creds); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cc.Close() })
		}
		sctx, scancel := context.WithCancel(ctx)
		st, err := gridpb.NewWatchClient(cc).Watch(sctx, &gridpb.WatchRequest{Map: "kv", Partition: 0})
		if err == nil {
			_, err = st.Header() // the stream is accepted, or refused, by now
		}
		if err == nil {
			// A refusal arrives as the stream's first message.
			rctx, rcancel := context.WithTimeout(sctx, 300*time.Millisecond)
			defer rcancel()
			done := make(chan error, 1)
			go func() { _, err := st.Recv(); done <- err }() // ends when the stream does (scancel)
			select {
			case err = <-done:
				if status.Code(err) != codes.ResourceExhausted {
					err = nil // a normal watch message or end
				}
			case <-rctx.Done():
			}
		}
		return scancel, err
	}
	var cancels []context.CancelFunc
	for i := range 3 {
		c, err := open(nil)
		if err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
		cancels = append(cancels, c)
	}
	_, err = open(nil)
	if status.Code(err) != codes.ResourceExhausted || !errors.Is(gridpb.FromStatus(err), client.ErrTooManyRequests) {
		t.Fatalf("a fourth stream: %v, want ResourceExhausted (too many requests)", err)
	}
	t.Logf("fourth stream refused: %v", err)
	// Another client has its own count.
	dir := filepath.Join(t.TempDir(), "other")
	if err := gridtls.IssueClient(caDir, dir, "other", []string{"read"}); err != nil {
		t.Fatal(err)
	}
	otherCreds := grpc.WithTransportCredentials(credentials.NewTLS(mustLoad(t, gridtls.LoadClient, dir).ClientConfig()))
	oc, err := open(otherCreds)
	if err != nil {
		t.Fatalf("another client's stream: %v", err)
	}
	defer oc()
	// One closes: a new one is accepted.
	cancels[0]()
	eventually(t, 5*time.Second, func() error {
		c, err := open(nil)
		if err == nil {
			cancels[0] = c
		}
		return err
	})
	for _, c := range cancels {
		c()
	}
}

// TestEveryMethodRefusesStrangers calls every method of every zerogrid
// service (found in the registered proto descriptors, so a new method is
// covered without editing this test) with an empty request: without a
// certificate each is refused Unauthenticated, and with a client
// certificate that holds no role PermissionDenied — all but the two that
// any certificate may call (the routing table and the map names). With a
// node certificate, a request of every method but Raft's is refused
// ResourceExhausted when it is over the method's receive limit (2 MiB; a
// transaction takes it) and when it is over the server's (8 MiB). Nothing
// changes meanwhile.
func TestEveryMethodRefusesStrangers(t *testing.T) {
	lc, c := startCluster(t, 2, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Map("kv").Put(ctx, []byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	before, err := c.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := gridtls.IssueClient(caDir, filepath.Join(dir, "noroles"), "noroles", nil); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "ca-only"), 0o700); err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(caDir, gridtls.CACert))
	if err := os.WriteFile(filepath.Join(dir, "ca-only", gridtls.CACert), caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	dial := func(m *gridtls.Material) *grpc.ClientConn {
		conn, err := grpc.NewClient(lc.Addr("n1"), grpc.WithTransportCredentials(credentials.NewTLS(m.ClientConfig())))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	anonymous := dial(mustLoad(t, gridtls.LoadCA, filepath.Join(dir, "ca-only")))
	noRoles := dial(mustLoad(t, gridtls.LoadClient, filepath.Join(dir, "noroles")))
	asNode := dial(mustLoad(t, gridtls.LoadNode, lc.TLSDir("n1"))) // every role: only the size refuses
	anyCert := map[string]bool{"/zerogrid.v1.Admin/GetTable": true, "/zerogrid.v1.Admin/ListMaps": true}

	// invoke calls method with an empty request, or one padded with pad
	// bytes of an unknown field (and naming node n1 where it names a node).
	invoke := func(conn *grpc.ClientConn, method string, md protoreflect.MethodDescriptor, pad int) error {
		in, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
		if err != nil {
			t.Fatal(err)
		}
		req := in.New()
		if pad > 0 {
			if f := req.Descriptor().Fields().ByName("node_id"); f != nil {
				req.Set(f, protoreflect.ValueOfString("n1"))
			}
			req.SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 999, protowire.BytesType), make([]byte, pad)))
		}
		out, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
		if err != nil {
			t.Fatal(err)
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		if !md.IsStreamingClient() && !md.IsStreamingServer() {
			return conn.Invoke(cctx, method, req.Interface(), out.New().Interface())
		}
		st, err := conn.NewStream(cctx, &grpc.StreamDesc{ServerStreams: md.IsStreamingServer(), ClientStreams: md.IsStreamingClient()}, method)
		if err != nil {
			return err
		}
		if err := st.SendMsg(req.Interface()); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		_ = st.CloseSend()
		return st.RecvMsg(out.New().Interface())
	}
	methods := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("zerogrid.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				md := sd.Methods().Get(j)
				method := "/" + string(sd.FullName()) + "/" + string(md.Name())
				methods++
				if err := invoke(anonymous, method, md, 0); status.Code(err) != codes.Unauthenticated {
					t.Errorf("%s without a certificate: %v, want Unauthenticated", method, err)
				}
				err := invoke(noRoles, method, md, 0)
				if anyCert[method] {
					if status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unauthenticated {
						t.Errorf("%s with a certificate: %v", method, err)
					}
				} else if status.Code(err) != codes.PermissionDenied {
					t.Errorf("%s with a certificate holding no role: %v, want PermissionDenied", method, err)
				}
				if sd.Name() == "Raft" {
					continue // Raft's limit is Raft's, on connections of its own
				}
				// 2 MiB: over every method's own receive limit but a
				// transaction's (3.1 MiB); 8 MiB: over the services'
				// server's, refused before it is read.
				err = invoke(asNode, method, md, 2<<20)
				if method == gridpb.KV_Txn_FullMethodName {
					if status.Code(err) == codes.ResourceExhausted {
						t.Errorf("a 2 MiB %s: %v", method, err)
					}
				} else if !errors.Is(gridpb.FromStatus(err), grid.ErrRequestTooLarge) || !strings.Contains(fmt.Sprint(err), method) {
					t.Errorf("a 2 MiB %s: %v, want ResourceExhausted naming the method's limit", method, err)
				}
				if err := invoke(asNode, method, md, 8<<20); status.Code(err) != codes.ResourceExhausted || !strings.Contains(fmt.Sprint(err), "larger than max") {
					t.Errorf("an 8 MiB %s: %v, want ResourceExhausted (larger than the server's limit)", method, err)
				}
			}
		}
		return true
	})
	if methods < 35 {
		t.Fatalf("only %d methods found", methods)
	}
	after, err := c.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Epoch != before.Epoch {
		t.Errorf("the table changed (epoch %d → %d)", before.Epoch, after.Epoch)
	}
	if v, _, err := c.Map("kv").Get(ctx, []byte("k")); err != nil || string(v) != "v" {
		t.Errorf("data changed: %q, %v", v, err)
	}
	t.Logf("%d methods refused to strangers", methods)
}

// raftCreds are a node certificate's credentials for a Raft connection:
// it asks for ALPN gridtls.ALPNRaft, as the nodes' own do.
func raftCreds(t *testing.T, nodeTLSDir string) credentials.TransportCredentials {
	cfg := mustLoad(t, gridtls.LoadNode, nodeTLSDir).ClientConfig()
	cfg.NextProtos = []string{gridtls.ALPNRaft}
	return credentials.NewTLS(cfg)
}

// countingCreds counts the TLS handshakes of a client's connections: a
// refusal over a connection made before a revocation must come without a
// new one (a new handshake would be refused by the handshake itself).
type countingCreds struct {
	credentials.TransportCredentials
	handshakes *atomic.Int32
}

func (c countingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c.handshakes.Add(1)
	return c.TransportCredentials.ClientHandshake(ctx, authority, raw)
}

func (c countingCreds) Clone() credentials.TransportCredentials {
	return countingCreds{TransportCredentials: c.TransportCredentials.Clone(), handshakes: c.handshakes}
}

// TestRevokedOnOpenConnections revokes certificates while their holders
// are connected. A client's next calls over the connections it already
// has are refused (Unauthenticated, no new handshake) and change nothing,
// and its open watch ends instead of delivering the next change. A node
// certificate revoked on the other nodes can no longer vote or append
// over its open connections, Raft pipeline included, and the cluster
// goes on without it.
func TestRevokedOnOpenConnections(t *testing.T) {
	lc, c := startCluster(t, 1, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	certs := t.TempDir()
	if err := gridtls.IssueClient(caDir, filepath.Join(certs, "leaver"), "leaver", []string{"read", "write"}); err != nil {
		t.Fatal(err)
	}
	var handshakes atomic.Int32
	creds := countingCreds{credentials.NewTLS(mustLoad(t, gridtls.LoadClient, filepath.Join(certs, "leaver")).ClientConfig()), &handshakes}
	var conns []*grpc.ClientConn
	for _, addr := range lc.Addrs() {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conns = append(conns, conn)
	}
	put := func(conn *grpc.ClientConn, key string, seq uint64) error {
		_, err := gridpb.NewKVClient(conn).Put(ctx, &gridpb.PutRequest{Header: &gridpb.WriteHeader{Map: "kv", ClientId: 4242, Seq: seq}, Key: []byte(key), Value: []byte("by leaver")})
		return err
	}
	get := func(conn *grpc.ClientConn, key string) error {
		_, err := gridpb.NewKVClient(conn).Get(ctx, &gridpb.GetRequest{Map: "kv", Key: []byte(key), Consistency: gridpb.Consistency_STALE})
		return err
	}
	// Before: the leaver reads on every node and writes through the leader.
	eventually(t, 20*time.Second, func() error {
		var errs []error
		for _, conn := range conns {
			if err := put(conn, "before", 1); err == nil {
				return nil
			} else {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	for i, conn := range conns {
		if err := get(conn, "before"); err != nil {
			t.Fatalf("a read on %s before the revocation: %v", lc.IDs()[i], err)
		}
	}
	watch, err := gridpb.NewWatchClient(conns[0]).Watch(ctx, &gridpb.WatchRequest{Map: "kv", Partition: 0})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatalf("the watch's first response: %v", err)
	}
	opened := handshakes.Load()
	if opened != int32(len(conns)) {
		t.Fatalf("%d handshakes for %d connections", opened, len(conns))
	}

	var nodeDirs []string
	for _, id := range lc.IDs() {
		nodeDirs = append(nodeDirs, lc.TLSDir(id))
	}
	runCLI(t, ctx, "cert", "revoke", "--cert", filepath.Join(certs, "leaver", gridtls.ClientCert), "--out", strings.Join(nodeDirs, ","))
	// Each node sees the list within a tenth of a second of its change (a
	// look at the file serves the checks of the next 100 ms: they are map
	// lookups).
	eventually(t, 10*time.Second, func() error {
		for i, conn := range conns {
			if err := get(conn, "before"); status.Code(err) != codes.Unauthenticated {
				return fmt.Errorf("a read on %s after the revocation: %v", lc.IDs()[i], err)
			}
		}
		return nil
	})
	for i, conn := range conns {
		err := put(conn, "after", 2)
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(fmt.Sprint(err), "revoked") {
			t.Fatalf("a put on %s after the revocation: %v, want Unauthenticated (revoked)", lc.IDs()[i], err)
		}
	}
	if v, _, err := c.Map("kv").Get(ctx, []byte("after")); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("after the refused put: %q, %v, want not found", v, err)
	}
	// The watch opened before ends at the next change instead of showing it.
	if _, err := c.Map("kv").Put(ctx, []byte("watched"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := watch.Recv()
		if err != nil {
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("the watch after the revocation ended with %v, want Unauthenticated", err)
			}
			break
		}
		for _, ch := range resp.Changes {
			for _, ev := range ch.Events {
				if string(ev.Key) == "watched" {
					t.Fatal("a revoked certificate's watch was shown a change made after the revocation")
				}
			}
		}
	}
	if n := handshakes.Load(); n != opened {
		t.Fatalf("%d handshakes after the revocation, %d before: the refusals did not come over the open connections", n, opened)
	}

	// A node: n3's certificate, connected to n1 before it is revoked there
	// and on n2, votes and appends (as a stale candidate and leader, which
	// Raft turns down without effect) until it is revoked, then not even
	// over the pipeline stream it opened before.
	n3, err := grpc.NewClient(lc.Addr("n1"), grpc.WithTransportCredentials(raftCreds(t, lc.TLSDir("n3"))))
	if err != nil {
		t.Fatal(err)
	}
	defer n3.Close()
	header := &gridpb.RaftHeader{ProtocolVersion: 3, Id: []byte("n3"), Addr: []byte(lc.Addr("n3"))}
	vote := func() error {
		_, err := gridpb.NewRaftClient(n3).RequestVote(ctx, &gridpb.RaftRequestVoteRequest{Group: 0, Header: header, Term: 0, Candidate: []byte(lc.Addr("n3"))})
		return err
	}
	appendReq := &gridpb.RaftAppendEntriesRequest{Group: 0, Header: header, Term: 0, Leader: []byte(lc.Addr("n3"))}
	if err := vote(); err != nil {
		t.Fatalf("n3's stale vote request before its revocation: %v", err)
	}
	pipe, err := gridpb.NewRaftClient(n3).AppendEntriesPipeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := pipe.Send(appendReq); err != nil {
		t.Fatal(err)
	}
	if resp, err := pipe.Recv(); err != nil || resp.Success {
		t.Fatalf("n3's stale append before its revocation: %v, %v", resp, err)
	}
	runCLI(t, ctx, "cert", "revoke", "--cert", filepath.Join(lc.TLSDir("n3"), gridtls.NodeCert), "--out", lc.TLSDir("n1")+","+lc.TLSDir("n2"))
	eventually(t, 10*time.Second, func() error {
		if err := vote(); status.Code(err) != codes.Unauthenticated {
			return fmt.Errorf("n3's vote request after its revocation: %v", err)
		}
		return nil
	})
	if err := pipe.Send(appendReq); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if _, err := pipe.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("n3's append on its open pipeline after its revocation: %v, want Unauthenticated", err)
	}
	// The real n3 is cut off from n1 and n2 the same way; they go on.
	eventually(t, 30*time.Second, func() error {
		wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
		defer wcancel()
		_, err := c.Map("kv").Put(wctx, []byte("without n3"), []byte("v"))
		return err
	})
}
