package gridtls

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
)

// A bearer token is a client's alternative to a client certificate: its
// name, roles, expiry and id, signed with the cluster CA's key, so that
// every node checks it with the ca.crt it already holds. It travels in
// the "authorization: Bearer" metadata of each call, over TLS only.
// Revoking it is adding its id to the nodes' revoked lists.
const tokenPrefix = "zgt1."

// TokenClaims is what a token says.
type TokenClaims struct {
	ID      string   `json:"id"`
	Name    string   `json:"name"`
	Roles   []string `json:"roles"`
	Expires int64    `json:"exp"` // Unix seconds
}

// IssueToken signs a token for name with roles, valid for validity (0: 90
// days), with the CA in caDir.
func IssueToken(caDir, name string, roles []string, validity time.Duration) (string, error) {
	if name == "" {
		return "", errors.New("gridtls: a token needs a name")
	}
	if validity == 0 {
		validity = 90 * 24 * time.Hour
	}
	_, key, err := loadCA(caDir)
	if err != nil {
		return "", err
	}
	var id [12]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", fmt.Errorf("gridtls: token id: %w", err)
	}
	var rs []string
	for _, r := range roles {
		if r = strings.TrimSpace(r); r != "" {
			rs = append(rs, r)
		}
	}
	payload, err := json.Marshal(TokenClaims{ID: hex.EncodeToString(id[:]), Name: name, Roles: rs, Expires: time.Now().Add(validity).Unix()})
	if err != nil {
		return "", err
	}
	body := tokenPrefix + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(body))
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		return "", fmt.Errorf("gridtls: sign token: %w", err)
	}
	return body + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// verifyToken checks a token's signature against the CA, its expiry and
// the revoked list, and returns the identity it carries.
func (m *Material) verifyToken(tok string, now time.Time) (Identity, TokenClaims, error) {
	bad := func(why string) (Identity, TokenClaims, error) {
		return Identity{}, TokenClaims{}, fmt.Errorf("gridtls: bad token: %s", why)
	}
	if !strings.HasPrefix(tok, tokenPrefix) {
		return bad("not a zerogrid token")
	}
	body, sigB64, ok := strings.Cut(tok[len(tokenPrefix):], ".")
	if !ok {
		return bad("no signature")
	}
	sig, err := base64.RawURLEncoding.DecodeString(sigB64)
	if err != nil {
		return bad("signature encoding")
	}
	pub, ok := m.ca.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return bad("the CA key is not ECDSA")
	}
	sum := sha256.Sum256([]byte(tokenPrefix + body))
	if !ecdsa.VerifyASN1(pub, sum[:], sig) {
		return bad("signature does not match the cluster CA")
	}
	payload, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		return bad("payload encoding")
	}
	var c TokenClaims
	if err := json.Unmarshal(payload, &c); err != nil || c.Name == "" || c.ID == "" {
		return bad("payload")
	}
	if now.Unix() >= c.Expires {
		return bad(fmt.Sprintf("expired at %s", time.Unix(c.Expires, 0).UTC().Format(time.RFC3339)))
	}
	if m.isRevokedID(c.ID) {
		return bad(fmt.Sprintf("token %s (%q) is revoked", c.ID, c.Name))
	}
	return Identity{Kind: KindToken, Name: c.Name, Roles: c.Roles, Serial: strings.ToLower(c.ID)}, c, nil
}

// KindToken is the kind of an identity that came from a bearer token.
const KindToken = "zerogrid-token"

// VerifyBearer checks an "authorization" header value ("Bearer TOKEN")
// and returns the identity its token carries.
// Verified tokens are remembered (their signature is checked once: an
// ECDSA verification costs milliseconds on a Pi Zero, and a token is sent
// with every call); expiry and revocation are checked on every use.
func (m *Material) VerifyBearer(header string) (Identity, error) {
	tok, found := strings.CutPrefix(header, "Bearer ")
	if !found {
		return Identity{}, errors.New("gridtls: authorization is not a Bearer token")
	}
	tok = strings.TrimSpace(tok)
	now := time.Now()
	m.tokMu.Lock()
	v, ok := m.tokens[tok]
	m.tokMu.Unlock()
	if ok {
		switch {
		case now.Unix() >= v.expires:
			return Identity{}, fmt.Errorf("gridtls: bad token: expired at %s", time.Unix(v.expires, 0).UTC().Format(time.RFC3339))
		case m.isRevokedID(v.id):
			return Identity{}, fmt.Errorf("gridtls: bad token: token %s (%q) is revoked", v.id, v.who.Name)
		}
		return v.who, nil
	}
	who, c, err := m.verifyToken(tok, now)
	if err != nil {
		return Identity{}, err
	}
	m.tokMu.Lock()
	if m.tokens == nil || len(m.tokens) >= maxVerifiedTokens {
		m.tokens = map[string]verifiedToken{}
	}
	m.tokens[tok] = verifiedToken{who: who, id: c.ID, expires: c.Expires}
	m.tokMu.Unlock()
	return who, nil
}

// maxVerifiedTokens bounds the remembered tokens (all are forgotten at
// once when it is reached).
const maxVerifiedTokens = 1024

type verifiedToken struct {
	who     Identity
	id      string
	expires int64
}

// tokenKey marks a call's token identity in its context.
type tokenKey struct{}

// WithTokenIdentity records a verified token's identity in ctx, where
// FromContext finds it.
func WithTokenIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, tokenKey{}, id)
}

// TokenCreds sends the token in the file at path with every call; it
// requires a TLS connection. The file is read once.
func TokenCreds(path string) (credentials.PerRPCCredentials, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gridtls: token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if !strings.HasPrefix(tok, tokenPrefix) {
		return nil, fmt.Errorf("gridtls: %s holds no zerogrid token ('zerogrid cert token')", path)
	}
	return bearer(tok), nil
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// LoadCA reads only a TLS directory's ca.crt: the material of a client that
// authenticates with a token instead of a certificate.
func LoadCA(dir string) (*Material, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, fmt.Errorf("gridtls: %w (a TLS directory holds ca.crt and a key pair: see 'zerogrid cert')", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("gridtls: %s holds no PEM certificate", filepath.Join(dir, CACert))
	}
	blk, _ := pem.Decode(caPEM)
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("gridtls: %s: %w", filepath.Join(dir, CACert), err)
	}
	return &Material{dir: dir, roots: roots, ca: ca}, nil
}

// TokenID returns the id a token claims (unverified): what Revoke lists.
func TokenID(tok string) (string, string, error) {
	body, _, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(tok), tokenPrefix), ".")
	if !ok || !strings.HasPrefix(strings.TrimSpace(tok), tokenPrefix) {
		return "", "", errors.New("gridtls: not a zerogrid token")
	}
	payload, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		return "", "", errors.New("gridtls: not a zerogrid token")
	}
	var c TokenClaims
	if err := json.Unmarshal(payload, &c); err != nil || c.ID == "" {
		return "", "", errors.New("gridtls: not a zerogrid token")
	}
	return c.ID, c.Name, nil
}
