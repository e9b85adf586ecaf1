// Package gridtls is zerogrid's mutual TLS: a cluster certificate
// authority, node and client certificates issued by it, the transport
// credentials of servers and clients, and the identity a verified peer
// certificate carries.
//
// A TLS directory (node --tls-dir, the CLI's --tls-dir, client.WithTLSDir)
// holds ca.crt and one key pair: node.crt and node.key for a node, or
// client.crt and client.key for a client. A node certificate names its node
// id (the subject's common name, with an organizational unit "zerogrid-node")
// and the addresses it serves on; a client certificate names a user (with
// unit "zerogrid-client") and carries its roles as further units
// ("role:admin"). The CA key (ca.key) stays with the operator: it is needed
// to issue certificates, never to run a node.
//
// Key pairs are read again when their files change, so certificates can be
// replaced without a restart. A node's TLS directory may also hold
// "revoked", the serial numbers of certificates it refuses (Revoke), read
// again when it changes; expired certificates are refused by the standard
// verification.
package gridtls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// File names inside a TLS directory.
const (
	CACert     = "ca.crt"
	CAKey      = "ca.key"
	NodeCert   = "node.crt"
	NodeKey    = "node.key"
	ClientCert = "client.crt"
	ClientKey  = "client.key"
	// Revoked lists revoked certificates' serial numbers (hex, one per
	// line, '#' starts a comment) in a node's TLS directory.
	Revoked = "revoked"
)

// Kinds of certificate, as one of the subject's organizational units.
const (
	KindNode   = "zerogrid-node"
	KindClient = "zerogrid-client"
)

// ALPNRaft is the ALPN protocol a node asks for on its connections for
// Raft: its peers serve those apart from every other call, with Raft's
// large receive limit, to node certificates only.
const ALPNRaft = "zerogrid-raft"

// rolePrefix marks a role among a client certificate's units.
const rolePrefix = "role:"

// Validity of what this package issues.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	certValidity = 2 * 365 * 24 * time.Hour
)

// NewCA creates a cluster certificate authority in dir (ca.crt and ca.key),
// refusing to overwrite one.
func NewCA(dir, name string) error {
	if _, err := os.Stat(filepath.Join(dir, CAKey)); err == nil {
		return fmt.Errorf("gridtls: %s already holds a CA key: refusing to overwrite it", dir)
	}
	if name == "" {
		name = "zerogrid cluster CA"
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("gridtls: CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("gridtls: CA certificate: %w", err)
	}
	return writePair(dir, CACert, CAKey, der, key)
}

// IssueNode issues a certificate for node id, serving on hosts (IP
// addresses or DNS names; ports are dropped), into outDir as node.crt and
// node.key, with a copy of the CA certificate.
func IssueNode(caDir, outDir, id string, hosts []string) error {
	if id == "" {
		return errors.New("gridtls: a node certificate needs the node id")
	}
	if len(hosts) == 0 {
		return errors.New("gridtls: a node certificate needs the addresses the node serves on")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: id, OrganizationalUnit: []string{KindNode}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return issue(caDir, outDir, NodeCert, NodeKey, tmpl)
}

// IssueClient issues a certificate for user name with roles into outDir as
// client.crt and client.key, with a copy of the CA certificate, valid for
// two years (IssueClientFor to choose).
func IssueClient(caDir, outDir, name string, roles []string) error {
	return IssueClientFor(caDir, outDir, name, roles, 0)
}

// IssueClientFor is IssueClient valid for validity from now (0: two years;
// never past the CA's own expiry).
func IssueClientFor(caDir, outDir, name string, roles []string, validity time.Duration) error {
	if name == "" {
		return errors.New("gridtls: a client certificate needs a name")
	}
	units := []string{KindClient}
	for _, r := range roles {
		if r = strings.TrimSpace(r); r != "" {
			units = append(units, rolePrefix+r)
		}
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, OrganizationalUnit: units},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if validity != 0 {
		tmpl.NotAfter = time.Now().Add(validity)
	}
	return issue(caDir, outDir, ClientCert, ClientKey, tmpl)
}

func issue(caDir, outDir, certName, keyName string, tmpl *x509.Certificate) error {
	caCert, caKey, err := loadCA(caDir)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("gridtls: key: %w", err)
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return err
	}
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(certValidity)
	}
	if tmpl.NotAfter.Before(tmpl.NotBefore) {
		tmpl.NotBefore = tmpl.NotAfter.Add(-time.Hour) // an already expired certificate (tests)
	}
	if caCert.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = caCert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("gridtls: certificate: %w", err)
	}
	if err := writePair(outDir, certName, keyName, der, key); err != nil {
		return err
	}
	return writeFile(filepath.Join(outDir, CACert), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw}), 0o644)
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, nil, fmt.Errorf("gridtls: CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKey))
	if err != nil {
		return nil, nil, fmt.Errorf("gridtls: CA key (issuing needs the CA directory made by 'zerogrid cert ca'): %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("gridtls: CA in %s: %w", dir, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("gridtls: CA key in %s is not ECDSA", dir)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("gridtls: CA certificate in %s: %w", dir, err)
	}
	return cert, key, nil
}

func writePair(dir, certName, keyName string, der []byte, key *ecdsa.PrivateKey) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("gridtls: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("gridtls: key: %w", err)
	}
	if err := writeFile(filepath.Join(dir, keyName), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, certName), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// writeFile replaces path atomically (a reloading reader never sees half a file).
func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("gridtls: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("gridtls: %w", err)
	}
	return nil
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("gridtls: serial number: %w", err)
	}
	return n, nil
}

// Material is a TLS directory's CA and key pair, read again when the key
// pair's files change.
type Material struct {
	dir, certFile, keyFile string // no key pair (LoadCA): certFile is empty
	roots                  *x509.CertPool
	ca                     *x509.Certificate

	mu      sync.Mutex
	pair    *tls.Certificate
	modTime time.Time

	revMu      sync.Mutex
	revModTime time.Time
	revoked    map[string]bool // serial numbers, lower-case hex
	revSeen    atomic.Pointer[revokedSeen]
	revRecheck time.Duration // revokedRecheck; tests shorten it

	tokMu  sync.Mutex
	tokens map[string]verifiedToken // bearer tokens whose signature checked out
}

// LoadNode reads a node's TLS directory (ca.crt, node.crt, node.key).
func LoadNode(dir string) (*Material, error) { return load(dir, NodeCert, NodeKey) }

// LoadClient reads a client's TLS directory: ca.crt with client.crt and
// client.key, or a node's key pair when there is no client one.
func LoadClient(dir string) (*Material, error) {
	for _, pair := range [][2]string{{ClientCert, ClientKey}, {NodeCert, NodeKey}} {
		if _, err := os.Stat(filepath.Join(dir, pair[0])); err == nil {
			return load(dir, pair[0], pair[1])
		}
	}
	return nil, fmt.Errorf("gridtls: %s holds no client.crt or node.crt (a client with a token needs only ca.crt: LoadCA)", dir)
}

func load(dir, certName, keyName string) (*Material, error) {
	m, err := LoadCA(dir)
	if err != nil {
		return nil, err
	}
	m.certFile, m.keyFile = filepath.Join(dir, certName), filepath.Join(dir, keyName)
	if _, err := m.keyPair(); err != nil {
		return nil, err
	}
	return m, nil
}

// keyPair returns the key pair, reading it again if its files changed.
func (m *Material) keyPair() (*tls.Certificate, error) {
	if m.certFile == "" {
		return &tls.Certificate{}, nil // a token client shows no certificate
	}
	st, err := os.Stat(m.certFile)
	if err != nil {
		return nil, fmt.Errorf("gridtls: %w", err)
	}
	kst, err := os.Stat(m.keyFile)
	if err != nil {
		return nil, fmt.Errorf("gridtls: %w", err)
	}
	mod := st.ModTime()
	if kst.ModTime().After(mod) {
		mod = kst.ModTime()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pair != nil && mod.Equal(m.modTime) {
		return m.pair, nil
	}
	pair, err := tls.LoadX509KeyPair(m.certFile, m.keyFile)
	if err != nil {
		if m.pair != nil {
			return m.pair, nil // mid-replacement: keep serving the last good pair
		}
		return nil, fmt.Errorf("gridtls: key pair in %s: %w", m.dir, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("gridtls: %s: %w", m.certFile, err)
		}
	}
	m.pair, m.modTime = &pair, mod
	return m.pair, nil
}

// isRevoked reports whether the certificate's serial is in the directory's
// revoked list.
func (m *Material) isRevoked(c *x509.Certificate) bool {
	return m.revokedList()[c.SerialNumber.Text(16)]
}

// isRevokedID reports whether a token id is in the revoked list.
func (m *Material) isRevokedID(id string) bool { return m.revokedList()[strings.ToLower(id)] }

// revokedList is the directory's revoked list, read again when the file
// changes. The map is replaced, never changed, so callers may read it
// without the lock.
func (m *Material) revokedList() map[string]bool {
	path := filepath.Join(m.dir, Revoked)
	st, err := os.Stat(path)
	m.revMu.Lock()
	defer m.revMu.Unlock()
	switch {
	case err != nil:
		m.revoked, m.revModTime = nil, time.Time{}
	case !st.ModTime().Equal(m.revModTime):
		if b, err := os.ReadFile(path); err == nil {
			m.revoked, m.revModTime = parseRevoked(string(b)), st.ModTime()
		}
	}
	m.revSeen.Store(&revokedSeen{list: m.revoked, at: time.Now()})
	return m.revoked
}

// revokedRecheck is how long one look at the revoked list's file serves
// Revoked, the check made on every call and stream message of an open
// connection: between looks it is a map lookup, not a stat (about 4 µs on
// the development VM, far more on a Pi Zero, and Raft sends many
// messages), so a busy node stats the file ten times a second at most.
// Handshakes and bearer tokens look at the file each time.
const revokedRecheck = 100 * time.Millisecond

// revokedSeen is the revoked list as one look at its file found it.
type revokedSeen struct {
	list map[string]bool
	at   time.Time
}

// Revoked reports whether who's certificate (or token) is in the revoked
// list: cheap enough for every message of a connection opened before the
// revocation, which it catches within revokedRecheck of the file's change.
func (m *Material) Revoked(who Identity) bool {
	if who.Serial == "" {
		return false
	}
	recheck := revokedRecheck
	if m.revRecheck != 0 {
		recheck = m.revRecheck
	}
	if seen := m.revSeen.Load(); seen != nil && time.Since(seen.at) < recheck {
		return seen.list[who.Serial]
	}
	return m.revokedList()[who.Serial]
}

func parseRevoked(text string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.ToLower(strings.TrimSpace(line)); line != "" {
			out[strings.TrimPrefix(line, "0x")] = true
		}
	}
	return out
}

// Revoke appends the serial number of the certificate in certFile (or the
// id of the token in it) to the revoked list in each of dirs (nodes' TLS
// directories), with a comment naming it. Nodes refuse new connections
// made with the certificate, and calls made with the token, at once.
func Revoke(certFile string, dirs []string) (serialHex string, err error) {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return "", fmt.Errorf("gridtls: %w", err)
	}
	if id, name, err := TokenID(string(b)); err == nil {
		return id, appendRevoked(dirs, fmt.Sprintf("%s # token %q revoked %s\n", id, name, time.Now().UTC().Format(time.RFC3339)))
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", fmt.Errorf("gridtls: %s holds no PEM certificate", certFile)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("gridtls: %s: %w", certFile, err)
	}
	serialHex = c.SerialNumber.Text(16)
	line := fmt.Sprintf("%s # %s %q revoked %s\n", serialHex, identityOf(c).Kind, c.Subject.CommonName, time.Now().UTC().Format(time.RFC3339))
	return serialHex, appendRevoked(dirs, line)
}

// appendRevoked appends line to the revoked list in each of dirs.
func appendRevoked(dirs []string, line string) error {
	for _, d := range dirs {
		f, err := os.OpenFile(filepath.Join(d, Revoked), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("gridtls: %w", err)
		}
		_, werr := f.WriteString(line)
		cerr := f.Close()
		if err := errors.Join(werr, cerr); err != nil {
			return fmt.Errorf("gridtls: %w", err)
		}
	}
	return nil
}

// checkRevoked refuses a verified chain whose leaf is revoked.
func (m *Material) checkRevoked(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) > 0 && m.isRevoked(cs.PeerCertificates[0]) {
		return fmt.Errorf("gridtls: certificate %s (%q) is revoked", cs.PeerCertificates[0].SerialNumber.Text(16), cs.PeerCertificates[0].Subject.CommonName)
	}
	return nil
}

// Identity is what a verified certificate says about its holder.
type Identity struct {
	Kind  string   // KindNode or KindClient
	Name  string   // node id or user name
	Roles []string // a client's roles
	// Serial is what a revoked list names: the certificate's serial number
	// (lower-case hex) or the token's id.
	Serial string
}

// IsNode reports whether the holder is the cluster node id.
func (i Identity) IsNode(id string) bool { return i.Kind == KindNode && i.Name == id }

// Self is the identity of the material's own certificate.
func (m *Material) Self() (Identity, error) {
	p, err := m.keyPair()
	if err != nil {
		return Identity{}, err
	}
	return identityOf(p.Leaf), nil
}

func identityOf(c *x509.Certificate) Identity {
	id := Identity{Name: c.Subject.CommonName, Serial: c.SerialNumber.Text(16)}
	// The units are a DER SET: their order is not kept.
	for _, u := range c.Subject.OrganizationalUnit {
		switch {
		case u == KindNode || u == KindClient:
			id.Kind = u
		case strings.HasPrefix(u, rolePrefix):
			id.Roles = append(id.Roles, strings.TrimPrefix(u, rolePrefix))
		}
	}
	return id
}

// FromContext returns the identity of a gRPC call's verified peer
// certificate, or of its verified bearer token (WithTokenIdentity); false
// when the call has neither.
func FromContext(ctx context.Context) (Identity, bool) {
	if id, ok := ctx.Value(tokenKey{}).(Identity); ok {
		return id, true
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, false
	}
	switch ai := p.AuthInfo.(type) {
	case ConnInfo:
		return ai.id, ai.verified
	case credentials.TLSInfo:
		return verifiedIdentity(ai.State)
	}
	return Identity{}, false
}

// verifiedIdentity is the identity of a handshake's verified peer
// certificate; false if the peer showed none.
func verifiedIdentity(state tls.ConnectionState) (Identity, bool) {
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return Identity{}, false
	}
	return identityOf(state.VerifiedChains[0][0]), true
}

// ConnInfo is the gRPC AuthInfo of a connection whose TLS handshake is
// done: the handshake's state, and the identity of the peer's verified
// certificate worked out once for the connection. FromContext is asked
// several times per call and for every Raft message; rebuilding the
// identity each time (the serial number as text, the roles) was 1.3 % of
// a node's CPU under linearizable gets in the third session's profile
// (BENCHMARKS.md). Its Roles must not be modified.
type ConnInfo struct {
	credentials.TLSInfo
	id       Identity
	verified bool
}

// NewConnInfo returns the AuthInfo of a connection with this handshake.
func NewConnInfo(state tls.ConnectionState) ConnInfo {
	ci := ConnInfo{TLSInfo: credentials.TLSInfo{State: state, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}}
	ci.id, ci.verified = verifiedIdentity(state)
	return ci
}

// ServerConfig is the TLS configuration of a node's listener: its own key
// pair, and a certificate from the cluster CA required of every caller.
func (m *Material) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// A certificate is verified when shown; a caller without one must
		// bring a bearer token signed by the CA, or every call is refused
		// (see the node's authorization).
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  m.roots,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return m.keyPair()
		},
		VerifyConnection: m.checkRevoked, // after the chain (and its expiry) is verified
	}
}

// ClientConfig is the TLS configuration of outgoing connections: the
// server must hold a node certificate from the cluster CA for the address
// dialled, and the caller shows its own key pair.
func (m *Material) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    m.roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return m.keyPair()
		},
		// The chain and the address are checked by the standard
		// verification (RootCAs, ServerName); this adds that the server is
		// a node, not a client certificate's holder.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("gridtls: the server showed no certificate")
			}
			if id := identityOf(cs.PeerCertificates[0]); id.Kind != KindNode {
				return fmt.Errorf("gridtls: the server's certificate (%q) is not a zerogrid node certificate", id.Name)
			}
			return m.checkRevoked(cs)
		},
	}
}

// HasRole reports whether the identity holds role.
func (i Identity) HasRole(role string) bool { return slices.Contains(i.Roles, role) }
