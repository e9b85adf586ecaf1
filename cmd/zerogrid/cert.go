package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/zerogrid/zerogrid/grid/gridtls"
)

const certUsage = `zerogrid cert ca --dir DIR [--name NAME]
    create the cluster's certificate authority in DIR (ca.crt, ca.key).
    Keep ca.key off the nodes: it is needed only to issue certificates.
zerogrid cert node --ca DIR --id ID --host HOST[,HOST...] --out DIR
    issue node ID's certificate for the addresses it serves on (IPs or
    names) into --out (ca.crt, node.crt, node.key): its node --tls-dir.
zerogrid cert client --ca DIR --name NAME [--roles ROLE,...] [--valid 720h] --out DIR
    issue a client certificate into --out (ca.crt, client.crt, client.key):
    the CLI's --tls-dir ($ZEROGRID_TLS_DIR), client.WithTLSDir in Go.
    Roles: read, write, compute, admin (admin includes the others).
zerogrid cert token --ca DIR --name NAME [--roles ROLE,...] [--valid 2160h] --out FILE
    sign a bearer token (an alternative to a client certificate, for
    clients that cannot hold one) into FILE: the CLI's --token-file
    ($ZEROGRID_TOKEN_FILE) with a --tls-dir holding only ca.crt,
    client.WithTokenFile in Go.
zerogrid cert revoke --cert FILE --out DIR[,DIR...]
    add the certificate's serial number (or the token's id, when FILE is a
    token) to the revoked list of each node TLS directory given: those nodes
    refuse it at once.
`

func runCert(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, certUsage)
		return errUsage
	}
	kind, rest := args[0], args[1:]
	fs := newFlags("cert "+kind, "cert ca|node|client [flags]", stderr)
	dir := fs.String("dir", "", "directory for the CA (cert ca)")
	name := fs.String("name", "", "the CA's name (cert ca) or the user's (cert client)")
	ca := fs.String("ca", "", "the CA directory made by 'zerogrid cert ca' (cert node, cert client)")
	id := fs.String("id", "", "node id (cert node)")
	hosts := fs.String("host", "", "addresses the node serves on, comma-separated (cert node)")
	roles := fs.String("roles", "", "roles, comma-separated (cert client): read, write, compute, admin")
	out := fs.String("out", "", "directory to write the certificate, its key and ca.crt to (cert token: the token file; cert revoke: nodes' TLS directories, comma-separated)")
	valid := fs.Duration("valid", 0, "how long the client certificate (default two years) or token (default 90 days) is valid")
	certFile := fs.String("cert", "", "the certificate to revoke (cert revoke)")
	pos, err := parse(fs, rest)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: cert %s takes no arguments, got %q", errUsage, kind, pos)
	}
	switch kind {
	case "ca":
		if *dir == "" {
			return fmt.Errorf("%w: cert ca needs --dir", errUsage)
		}
		if err := gridtls.NewCA(*dir, *name); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "cluster CA in %s (keep %s safe and off the nodes)\n", *dir, filepath.Join(*dir, gridtls.CAKey))
	case "node":
		if *ca == "" || *out == "" || *id == "" || *hosts == "" {
			return fmt.Errorf("%w: cert node needs --ca, --id, --host and --out", errUsage)
		}
		if err := gridtls.IssueNode(*ca, *out, *id, splitAddrs(*hosts)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "node %s: certificate in %s (node --tls-dir %s)\n", *id, *out, *out)
	case "client":
		if *ca == "" || *out == "" || *name == "" {
			return fmt.Errorf("%w: cert client needs --ca, --name and --out", errUsage)
		}
		if err := gridtls.IssueClientFor(*ca, *out, *name, splitAddrs(*roles), *valid); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "client %s (roles %s): certificate in %s (--tls-dir %s, or ZEROGRID_TLS_DIR)\n", *name, strings.Join(splitAddrs(*roles), ","), *out, *out)
	case "token":
		if *ca == "" || *out == "" || *name == "" {
			return fmt.Errorf("%w: cert token needs --ca, --name and --out", errUsage)
		}
		tok, err := gridtls.IssueToken(*ca, *name, splitAddrs(*roles), *valid)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*out, []byte(tok+"\n"), 0o600); err != nil {
			return err
		}
		id, _, _ := gridtls.TokenID(tok)
		fmt.Fprintf(stdout, "token %s for %s (roles %s) in %s (--token-file %s)\n", id, *name, strings.Join(splitAddrs(*roles), ","), *out, *out)
	case "revoke":
		if *certFile == "" || *out == "" {
			return fmt.Errorf("%w: cert revoke needs --cert and --out", errUsage)
		}
		serial, err := gridtls.Revoke(*certFile, splitAddrs(*out))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "certificate %s revoked in %s (connections already open stay until they close)\n", serial, *out)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, certUsage)
	default:
		fmt.Fprintf(stderr, "unknown cert kind %q\n\n%s", kind, certUsage)
		return errUsage
	}
	return nil
}
