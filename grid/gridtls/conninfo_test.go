package gridtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// clientState is a handshake state whose verified peer is a client
// certificate with roles.
func clientState(t testing.TB) tls.ConnectionState {
	dir, ca := newTestCA(t)
	if err := IssueClient(ca, filepath.Join(dir, "alice"), "alice", []string{"read", "write"}); err != nil {
		t.Fatal(err)
	}
	p, err := mustLoad(t, LoadClient, filepath.Join(dir, "alice")).keyPair()
	if err != nil {
		t.Fatal(err)
	}
	return tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{p.Leaf}}}
}

// A connection's identity worked out once (ConnInfo) is the one read from
// its handshake on every call; a connection without a verified certificate
// has none either way.
func TestConnInfoIdentity(t *testing.T) {
	state := clientState(t)
	in := func(ai credentials.AuthInfo) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: ai})
	}
	want, ok := FromContext(in(credentials.TLSInfo{State: state}))
	if !ok || want.Name != "alice" || want.Kind != KindClient || !slices.Equal(want.Roles, []string{"read", "write"}) || want.Serial == "" {
		t.Fatalf("identity from the handshake: %+v, %v", want, ok)
	}
	got, ok := FromContext(in(NewConnInfo(state)))
	if !ok || got.Name != want.Name || got.Kind != want.Kind || got.Serial != want.Serial || !slices.Equal(got.Roles, want.Roles) {
		t.Fatalf("identity from ConnInfo: %+v, %v; want %+v", got, ok, want)
	}
	if id, ok := FromContext(in(NewConnInfo(tls.ConnectionState{}))); ok {
		t.Fatalf("a connection without a verified certificate has identity %+v", id)
	}
	if ai := NewConnInfo(state); ai.AuthType() != "tls" {
		t.Fatalf("AuthType %q", ai.AuthType())
	}
}

func BenchmarkFromContext(b *testing.B) {
	state := clientState(b)
	for _, c := range []struct {
		name string
		ai   credentials.AuthInfo
	}{{"per-call", credentials.TLSInfo{State: state}}, {"per-connection", NewConnInfo(state)}} {
		ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: c.ai})
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := FromContext(ctx); !ok {
					b.Fatal("no identity")
				}
			}
		})
	}
}
