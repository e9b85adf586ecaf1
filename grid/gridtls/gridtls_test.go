package gridtls

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIssueLoadAndReload(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	if err := NewCA(ca, ""); err != nil {
		t.Fatal(err)
	}
	if err := NewCA(ca, ""); err == nil {
		t.Fatal("a second CA overwrote the first")
	}
	if err := IssueNode(ca, filepath.Join(dir, "n1"), "n1", []string{"127.0.0.1:7100", "pi-1.local"}); err != nil {
		t.Fatal(err)
	}
	if err := IssueClient(ca, filepath.Join(dir, "alice"), "alice", []string{"read", "write"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []error{
		IssueNode(ca, filepath.Join(dir, "x"), "", []string{"127.0.0.1"}),
		IssueNode(ca, filepath.Join(dir, "x"), "n2", nil),
		IssueClient(ca, filepath.Join(dir, "x"), "", nil),
		IssueNode(filepath.Join(dir, "n1"), filepath.Join(dir, "x"), "n2", []string{"127.0.0.1"}), // no CA key there
	} {
		if bad == nil {
			t.Error("a bad request was issued")
		}
	}

	n, err := LoadNode(filepath.Join(dir, "n1"))
	if err != nil {
		t.Fatal(err)
	}
	self, err := n.Self()
	if err != nil || !self.IsNode("n1") || self.IsNode("n2") {
		t.Fatalf("node identity %+v, %v", self, err)
	}
	p, _ := n.keyPair()
	if len(p.Leaf.IPAddresses) != 1 || p.Leaf.IPAddresses[0].String() != "127.0.0.1" || len(p.Leaf.DNSNames) != 1 {
		t.Errorf("node certificate names %v %v", p.Leaf.IPAddresses, p.Leaf.DNSNames)
	}
	c, err := LoadClient(filepath.Join(dir, "alice"))
	if err != nil {
		t.Fatal(err)
	}
	who, _ := c.Self()
	if who.Kind != KindClient || who.Name != "alice" || !who.HasRole("read") || !who.HasRole("write") || who.HasRole("admin") {
		t.Errorf("client identity %+v", who)
	}
	if _, err := LoadNode(filepath.Join(dir, "alice")); err == nil {
		t.Error("a client directory loaded as a node's")
	}

	// A re-issued key pair is picked up; a half-written one is not.
	first := p.Leaf.SerialNumber
	time.Sleep(10 * time.Millisecond) // a later modification time
	if err := IssueNode(ca, filepath.Join(dir, "n1"), "n1", []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	p2, err := n.keyPair()
	if err != nil || p2.Leaf.SerialNumber.Cmp(first) == 0 {
		t.Fatalf("the re-issued certificate was not loaded (%v)", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "n1", NodeCert), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	p3, err := n.keyPair()
	if err != nil || p3 != p2 {
		t.Errorf("a damaged certificate file replaced the good pair (%v)", err)
	}
}

// newTestCA makes a CA in a new temp dir and returns the dir and the CA's.
func newTestCA(t testing.TB) (dir, ca string) {
	t.Helper()
	dir = t.TempDir()
	ca = filepath.Join(dir, "ca")
	if err := NewCA(ca, ""); err != nil {
		t.Fatal(err)
	}
	return dir, ca
}

// tokenFile writes tok to a file in dir, as a client keeps it, and returns its path.
func tokenFile(t *testing.T, dir, tok string) string {
	t.Helper()
	f := filepath.Join(dir, "ci.token")
	if err := os.WriteFile(f, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestTokens(t *testing.T) {
	dir, ca := newTestCA(t)
	m, err := LoadCA(ca)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := IssueToken(ca, "ci", []string{"read", "write"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	who, err := m.VerifyBearer("Bearer " + tok)
	if err != nil || who.Kind != KindToken || who.Name != "ci" || !who.HasRole("write") {
		t.Fatalf("token identity %+v, %v", who, err)
	}
	if _, _, err := m.verifyToken(tok, time.Now().Add(2*time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("an expired token: %v", err)
	}
	if _, err := m.VerifyBearer(tok); err == nil {
		t.Error("a token without the Bearer scheme was accepted")
	}
	if again, err := m.VerifyBearer("Bearer " + tok); err != nil || again.Name != "ci" {
		t.Fatalf("a remembered token: %+v, %v", again, err)
	}
	// A changed payload breaks the signature.
	body, sig, _ := strings.Cut(strings.TrimPrefix(tok, tokenPrefix), ".")
	if _, err := m.VerifyBearer("Bearer " + tokenPrefix + body + "x." + sig); err == nil {
		t.Error("a token with an altered payload was accepted")
	}
	// Revoked by id.
	id, err := Revoke(tokenFile(t, dir, tok), []string{ca})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.VerifyBearer("Bearer " + tok); err == nil || !strings.Contains(err.Error(), id) {
		t.Errorf("a revoked token: %v", err)
	}
}

// TestRevokedIdentity checks the check made on open connections: a
// certificate's or a token's identity is revoked once its serial or id is
// in the list, and others are not.
func TestRevokedIdentity(t *testing.T) {
	dir, ca := newTestCA(t)
	for _, name := range []string{"alice", "bob"} {
		if err := IssueClient(ca, filepath.Join(dir, name), name, []string{"read"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := IssueNode(ca, filepath.Join(dir, "n1"), "n1", []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	n1 := mustLoad(t, LoadNode, filepath.Join(dir, "n1"))
	n1.revRecheck = time.Nanosecond // every check looks at the file
	alice, _ := mustLoad(t, LoadClient, filepath.Join(dir, "alice")).Self()
	bob, _ := mustLoad(t, LoadClient, filepath.Join(dir, "bob")).Self()
	tok, err := IssueToken(ca, "ci", []string{"read"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := n1.VerifyBearer("Bearer " + tok)
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []Identity{alice, bob, ci} {
		if who.Serial == "" || n1.Revoked(who) {
			t.Fatalf("%+v revoked before any revocation", who)
		}
	}
	if _, err := Revoke(filepath.Join(dir, "alice", ClientCert), []string{filepath.Join(dir, "n1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := Revoke(tokenFile(t, dir, tok), []string{filepath.Join(dir, "n1")}); err != nil {
		t.Fatal(err)
	}
	if !n1.Revoked(alice) || !n1.Revoked(ci) || n1.Revoked(bob) {
		t.Fatalf("after revoking alice and the token: alice %v, token %v, bob %v", n1.Revoked(alice), n1.Revoked(ci), n1.Revoked(bob))
	}
	if n1.Revoked(Identity{Kind: KindClient, Name: "alice"}) {
		t.Error("an identity without a serial is revoked")
	}
}

func mustLoad(t testing.TB, load func(string) (*Material, error), dir string) *Material {
	t.Helper()
	m, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
