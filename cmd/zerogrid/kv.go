package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

// clientFlags are the flags every client command shares.
type clientFlags struct {
	addr      string
	timeout   time.Duration
	tlsDir    string
	tokenFile string
	insecure  bool
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", cmp.Or(os.Getenv("ZEROGRID_ADDR"), "127.0.0.1:7101"), "cluster member address(es), comma-separated; default $ZEROGRID_ADDR, else 127.0.0.1:7101")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "give up after this long")
	fs.StringVar(&c.tlsDir, "tls-dir", os.Getenv("ZEROGRID_TLS_DIR"), "your certificates: ca.crt, client.crt, client.key ('zerogrid cert client'); default $ZEROGRID_TLS_DIR")
	fs.StringVar(&c.tokenFile, "token-file", os.Getenv("ZEROGRID_TOKEN_FILE"), "authenticate with this bearer token ('zerogrid cert token') instead of a client certificate; --tls-dir then needs only ca.crt; default $ZEROGRID_TOKEN_FILE")
	fs.BoolVar(&c.insecure, "insecure", false, "connect without TLS (to nodes started with --insecure)")
}

// dial connects to the cluster as the flags say.
func (c *clientFlags) dial(ctx context.Context) (*client.Client, error) {
	switch {
	case c.tlsDir == "" && !c.insecure:
		return nil, fmt.Errorf("%w: say which certificates to connect with (--tls-dir DIR or $ZEROGRID_TLS_DIR), or --insecure for a cluster without TLS", errUsage)
	}
	if c.insecure {
		return client.DialWith(ctx, splitAddrs(c.addr))
	}
	opts := []client.Option{client.WithTLSDir(c.tlsDir)}
	if c.tokenFile != "" {
		opts = append(opts, client.WithTokenFile(c.tokenFile))
	}
	return client.DialWith(ctx, splitAddrs(c.addr), opts...)
}

// longTimeout gives a long-running command its own --timeout default (and
// shows it in -h).
func longTimeout(fs *flag.FlagSet, d time.Duration, usage string) {
	f := fs.Lookup("timeout")
	_ = f.Value.Set(d.String())
	f.DefValue, f.Usage = d.String(), usage
}

// clientCommand is the shape of every client command: parse the shared and
// the command's own flags (added by flags), check the argument count, dial,
// run body, close.
func clientCommand(ctx context.Context, args []string, stderr io.Writer, name, synopsis string,
	nargs func(n int) bool, flags func(fs *flag.FlagSet), body func(ctx context.Context, cl *client.Client, pos []string) error) error {
	var cf clientFlags
	fs := newFlags(name, synopsis, stderr)
	cf.register(fs)
	if flags != nil {
		flags(fs)
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if !nargs(len(pos)) {
		fs.Usage()
		return errUsage
	}
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	cl, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	return body(ctx, cl, pos)
}

func exactly(n int) func(int) bool { return func(got int) bool { return got == n } }

func runMap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var asJSON bool
	return clientCommand(ctx, args, stderr, "map", "map create NAME | map list [--json]  [--addr ADDR]",
		func(n int) bool { return n == 1 || n == 2 },
		func(fs *flag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "map list: print the names as a JSON array")
		},
		func(ctx context.Context, cl *client.Client, pos []string) error {
			switch {
			case pos[0] == "create" && len(pos) == 2:
				if err := cl.CreateMap(ctx, pos[1]); err != nil {
					return err
				}
				fmt.Fprintf(stdout, "created map %s\n", pos[1])
				return nil
			case pos[0] == "list" && len(pos) == 1:
				names, err := cl.ListMaps(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(stdout, append([]string{}, names...))
				}
				for _, n := range names {
					fmt.Fprintln(stdout, n)
				}
				return nil
			}
			return fmt.Errorf("%w: map create NAME | map list", errUsage)
		})
}

func runPut(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var fence fenceFlag
	var ttl time.Duration
	return clientCommand(ctx, args, stderr, "put", "put MAP KEY VALUE [--ttl 30s] [--fence NAME:TOKEN]  (VALUE - reads stdin)", exactly(3),
		func(fs *flag.FlagSet) {
			fence.register(fs)
			fs.DurationVar(&ttl, "ttl", 0, "expire the key this long after the write (0: never)")
		},
		func(ctx context.Context, cl *client.Client, pos []string) error {
			value := []byte(pos[2])
			if pos[2] == "-" {
				var err error
				if value, err = io.ReadAll(os.Stdin); err != nil {
					return fmt.Errorf("read stdin: %w", err)
				}
			}
			opts := fence.options()
			if ttl != 0 {
				opts = append(opts, client.WithTTL(ttl))
			}
			v, err := cl.Map(pos[0]).Put(ctx, []byte(pos[1]), value, opts...)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "ok version=%d\n", v)
			return nil
		})
}

func runGet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var stale bool
	return clientCommand(ctx, args, stderr, "get", "get MAP KEY [--stale]", exactly(2),
		func(fs *flag.FlagSet) {
			fs.BoolVar(&stale, "stale", false, "read from any replica (the reply names it and its applied index)")
		},
		func(ctx context.Context, cl *client.Client, pos []string) error {
			var opts []client.ReadOption
			if stale {
				opts = append(opts, client.Stale())
			}
			e, err := cl.Map(pos[0]).GetEntry(ctx, []byte(pos[1]), opts...)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s\n", e.Value)
			if stale {
				fmt.Fprintf(stderr, "version=%d served-by=%s applied-index=%d\n", e.Version, e.ServedBy, e.AppliedIndex)
			}
			return nil
		})
}

func runDel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var fence fenceFlag
	return clientCommand(ctx, args, stderr, "del", "del MAP KEY [--fence NAME:TOKEN]", exactly(2), fence.register,
		func(ctx context.Context, cl *client.Client, pos []string) error {
			existed, err := cl.Map(pos[0]).Delete(ctx, []byte(pos[1]), fence.options()...)
			if err != nil {
				return err
			}
			if existed {
				fmt.Fprintln(stdout, "deleted")
			} else {
				fmt.Fprintln(stdout, "not found (nothing to delete)")
			}
			return nil
		})
}

func runScan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var limit int
	var stale, asJSON bool
	return clientCommand(ctx, args, stderr, "scan", "scan MAP [PREFIX] [--limit N] [--stale] [--json]",
		func(n int) bool { return n == 1 || n == 2 },
		func(fs *flag.FlagSet) {
			fs.IntVar(&limit, "limit", 0, "stop after N entries (0: all)")
			fs.BoolVar(&stale, "stale", false, "read from any replica")
			fs.BoolVar(&asJSON, "json", false, "print one JSON object per line")
		},
		func(ctx context.Context, cl *client.Client, pos []string) error {
			var prefix []byte
			if len(pos) == 2 {
				prefix = []byte(pos[1])
			}
			var opts []client.ReadOption
			if stale {
				opts = append(opts, client.Stale())
			}
			n := 0
			enc := json.NewEncoder(stdout)
			err := cl.Map(pos[0]).Scan(ctx, prefix, func(e client.Entry) error {
				if limit > 0 && n >= limit {
					return errStopScan
				}
				n++
				if asJSON {
					return enc.Encode(map[string]any{"key": string(e.Key), "value": string(e.Value), "version": e.Version})
				}
				_, err := fmt.Fprintf(stdout, "%s\t%s\n", e.Key, strings.ReplaceAll(string(e.Value), "\n", `\n`))
				return err
			}, opts...)
			if err != nil && !errors.Is(err, errStopScan) {
				return err
			}
			fmt.Fprintf(stderr, "%d entries\n", n)
			return nil
		})
}

var errStopScan = errors.New("scan stopped")
