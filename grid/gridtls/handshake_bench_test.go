package gridtls

import (
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
)

// BenchmarkHandshake is one mutual-TLS handshake between a node's server
// configuration and a client's, over an in-memory pipe: the cost a new
// connection pays (ECDSA P-256, TLS 1.3). Run it as ARMv6 code with
// PKG=grid/gridtls bash test/qemu-arm.sh to see a Pi Zero's share.
func BenchmarkHandshake(b *testing.B) {
	dir := b.TempDir()
	ca := filepath.Join(dir, "ca")
	if err := NewCA(ca, ""); err != nil {
		b.Fatal(err)
	}
	if err := IssueNode(ca, filepath.Join(dir, "n1"), "n1", []string{"127.0.0.1"}); err != nil {
		b.Fatal(err)
	}
	if err := IssueClient(ca, filepath.Join(dir, "c"), "c", []string{"read"}); err != nil {
		b.Fatal(err)
	}
	srvM, err := LoadNode(filepath.Join(dir, "n1"))
	if err != nil {
		b.Fatal(err)
	}
	cliM, err := LoadClient(filepath.Join(dir, "c"))
	if err != nil {
		b.Fatal(err)
	}
	srvCfg, cliCfg := srvM.ServerConfig(), cliM.ClientConfig()
	cliCfg.ServerName = "127.0.0.1"
	b.ResetTimer()
	for b.Loop() {
		a, c := net.Pipe()
		errc := make(chan error, 1)
		go func() { errc <- tls.Server(a, srvCfg).Handshake() }()
		if err := tls.Client(c, cliCfg).Handshake(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		a.Close()
		c.Close()
	}
}
