package main

import (
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
	addr    string
	timeout time.Duration
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", "127.0.0.1:7101", "cluster member address(es), comma-separated")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "give up after this long")
}

func (c *clientFlags) dial(ctx context.Context) (*client.Client, context.Context, context.CancelFunc, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	cl, err := client.Dial(ctx, splitAddrs(c.addr)...)
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return cl, ctx, cancel, nil
}

func runMap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlags("map", "map create NAME | map list  [--addr ADDR]", stderr)
	cf.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return errUsage
	}
	cl, ctx, cancel, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
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
		for _, n := range names {
			fmt.Fprintln(stdout, n)
		}
		return nil
	}
	fs.Usage()
	return errUsage
}

func runPut(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlags("put", "put MAP KEY VALUE  (VALUE - reads stdin)", stderr)
	cf.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 3 {
		fs.Usage()
		return errUsage
	}
	value := []byte(pos[2])
	if pos[2] == "-" {
		if value, err = io.ReadAll(os.Stdin); err != nil {
			return fmt.Errorf("read stdin: %w", err)
		}
	}
	cl, ctx, cancel, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	v, err := cl.Map(pos[0]).Put(ctx, []byte(pos[1]), value)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ok version=%d\n", v)
	return nil
}

func runGet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlags("get", "get MAP KEY [--stale]", stderr)
	cf.register(fs)
	stale := fs.Bool("stale", false, "read from any replica (the reply names it and its applied index)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		fs.Usage()
		return errUsage
	}
	cl, ctx, cancel, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	var opts []client.ReadOption
	if *stale {
		opts = append(opts, client.Stale())
	}
	e, err := cl.Map(pos[0]).GetEntry(ctx, []byte(pos[1]), opts...)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n", e.Value)
	if *stale {
		fmt.Fprintf(stderr, "version=%d served-by=%s applied-index=%d\n", e.Version, e.ServedBy, e.AppliedIndex)
	}
	return nil
}

func runDel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlags("del", "del MAP KEY", stderr)
	cf.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		fs.Usage()
		return errUsage
	}
	cl, ctx, cancel, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	existed, err := cl.Map(pos[0]).Delete(ctx, []byte(pos[1]))
	if err != nil {
		return err
	}
	if existed {
		fmt.Fprintln(stdout, "deleted")
	} else {
		fmt.Fprintln(stdout, "not found (nothing to delete)")
	}
	return nil
}

func runScan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlags("scan", "scan MAP [PREFIX] [--limit N] [--stale] [--json]", stderr)
	cf.register(fs)
	limit := fs.Int("limit", 0, "stop after N entries (0: all)")
	stale := fs.Bool("stale", false, "read from any replica")
	asJSON := fs.Bool("json", false, "print one JSON object per line")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 {
		fs.Usage()
		return errUsage
	}
	var prefix []byte
	if len(pos) == 2 {
		prefix = []byte(pos[1])
	}
	cl, ctx, cancel, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer cl.Close()
	var opts []client.ReadOption
	if *stale {
		opts = append(opts, client.Stale())
	}
	n := 0
	enc := json.NewEncoder(stdout)
	err = cl.Map(pos[0]).Scan(ctx, prefix, func(e client.Entry) error {
		if *limit > 0 && n >= *limit {
			return errStopScan
		}
		n++
		if *asJSON {
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
}

var errStopScan = errors.New("scan stopped")
