package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/node"
)

func runNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "drain", "undrain", "remove":
			return runNodeOp(ctx, args[0], args[1:], stdout, stderr)
		}
	}
	cfg := node.DefaultConfig()
	fs := newFlags("node", "node --id ID --listen ADDR --data-dir DIR (--peers ID=ADDR,... | --join ADDR --join-token T) [flags]", stderr)
	fs.StringVar(&cfg.ID, "id", "", "this node's id (unique in the cluster)")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:7101", "gRPC address to listen on and advertise")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the engine and Raft logs")
	peers := fs.String("peers", "", "initial cluster: id=host:port,... (include this node)")
	join := fs.String("join", "", "join a running cluster through these members: host:port,...")
	fs.StringVar(&cfg.JoinToken, "join-token", os.Getenv("ZEROGRID_JOIN_TOKEN"), "the cluster's join secret (founders set it; joiners present it; default $ZEROGRID_JOIN_TOKEN); prefer --join-token-file: a flag shows in ps")
	tokenFile := fs.String("join-token-file", "", "read the join token from this file (first line)")
	fs.StringVar(&cfg.TLSDir, "tls-dir", os.Getenv("ZEROGRID_NODE_TLS_DIR"), "the node's certificates: ca.crt, node.crt, node.key ('zerogrid cert'); default $ZEROGRID_NODE_TLS_DIR")
	fs.IntVar(&cfg.MaxClientRequests, "max-client-requests", 0, "calls one client (certificate) may have running on this node at once (default 1024)")
	fs.IntVar(&cfg.MaxClientStreams, "max-client-streams", 0, "streams (scans, watches, jobs, backups) one client may have open on this node (default 1024; a watch holds one per partition)")
	fs.Func("max-request-memory", "memory for the clients' requests being read and handled at once, each counted at the most one may bring (3.1 MiB with the default limits); more are refused as overloaded (e.g. 64MiB; default an eighth of the machine's memory, 64 MiB-1 GiB; 32 MiB with --profile small)", func(v string) error {
		b, err := humanize.ParseBytes(v)
		if err != nil || b == 0 || b > 1<<50 {
			return fmt.Errorf("want a size such as 64MiB")
		}
		cfg.MaxRequestMemory = int64(b)
		return nil
	})
	fs.StringVar(&cfg.OpsListen, "ops-listen", "", "serve /metrics (Prometheus), /healthz and /readyz over plain HTTP on this address (e.g. 127.0.0.1:9464; off by default)")
	fs.BoolVar(&cfg.OpsPprof, "ops-pprof", false, "also serve Go's profiler under /debug/pprof/ on the ops listener")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "no TLS and no authentication: anyone who reaches the port has full control; loopback experiments only")
	var labels labelFlag
	fs.Var(&labels, "label", "operator label key=value (repeatable): zone=shelf-2, rack=a, storage=false for a compute-only node")
	fs.DurationVar(&cfg.DeadAfter, "dead-after", 0, "declare a node silent this long dead and re-create its replicas (default 1m; 3s with --profile test)")
	fs.DurationVar(&cfg.ScrubInterval, "scrub-interval", 0, "pause between background scrubs of every local partition (default 6h; 24h with --profile small, 1s with test; negative: off)")
	fs.Func("min-free-disk", "space to keep free on the data disk: under it, writes are refused until space returns (e.g. 256MiB; default 2% of the disk, 64 MiB-1 GiB; \"off\": none)", func(v string) error {
		if v == "off" {
			cfg.MinFreeDisk = -1
			return nil
		}
		b, err := humanize.ParseBytes(v)
		if err != nil || b == 0 || b > 1<<50 {
			return fmt.Errorf("want a size such as 256MiB, or off")
		}
		cfg.MinFreeDisk = int64(b)
		return nil
	})
	fs.Int64Var(&cfg.ScrubBytesPerSec, "scrub-rate", 0, "scrub read rate in bytes/s (default 4 MiB/s; 512 KiB/s with --profile small)")
	fs.DurationVar(&cfg.ReportInterval, "report-interval", 0, "how often to report load to the metadata leader (default 2s; 5s small; 200ms test)")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "partition count (fixed when the cluster is created)")
	fs.IntVar(&cfg.Replicas, "replicas", cfg.Replicas, "copies of each partition")
	fs.StringVar(&cfg.Profile, "profile", cfg.Profile, "timing and memory profile: default, small (Pi Zero) or test")
	fs.StringVar(&cfg.Engine, "engine", "", "storage engine: badger or bbolt (default: bbolt on 32-bit ARM, badger elsewhere)")
	fs.IntVar(&cfg.Limits.MaxValueBytes, "max-value-bytes", cfg.Limits.MaxValueBytes, "largest value accepted")
	fs.IntVar(&cfg.Limits.MaxKeyBytes, "max-key-bytes", cfg.Limits.MaxKeyBytes, "largest key accepted")
	fs.IntVar(&cfg.WatchHistory, "watch-history", 0, "log indexes of change history each partition keeps for watches (default 10000; 2000 small); same on every node")
	fs.DurationVar(&cfg.SweepInterval, "sweep-interval", 0, "how often partition leaders delete expired keys (default 1s; 5s small; 200ms test)")
	fs.DurationVar(&cfg.TaskDelay, "task-delay", 0, "test knob: delay every compute task on this node (simulates a slow node)")
	fs.StringVar(&cfg.RESPListen, "resp-listen", "", "serve the Redis protocol (RESP2/3) on this address too, e.g. 127.0.0.1:6379: TLS with the cluster CA (client certificate or AUTH <token>), plain without --tls-dir only with --insecure")
	fs.StringVar(&cfg.RESPMap, "resp-map", "", "the map Redis connections start on (SELECT <map> names another; default redis)")
	fs.IntVar(&cfg.RESPMaxConns, "resp-max-conns", 0, "Redis connections open at once (default 1024)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	memLimit := fs.Int("memory-limit-mb", -1, "soft Go memory limit in MiB (default: 100 with --profile small, none otherwise; GOMEMLIMIT wins)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: node takes no arguments, got %q", errUsage, pos)
	}
	if cfg.Peers, err = node.ParsePeers(*peers); err != nil {
		return err
	}
	cfg.Join = splitAddrs(*join)
	if *tokenFile != "" {
		if cfg.JoinToken, err = readSecret(*tokenFile); err != nil {
			return fmt.Errorf("%w: --join-token-file: %v", errUsage, err)
		}
	}
	cfg.Labels = labels.m
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("%w: --log-level: %v", errUsage, err)
	}
	// The limit is process-wide, so the binary sets it, not the node package
	// (several nodes may share a process). It makes the GC work harder
	// before a bulk load pushes a 512 MB machine into swap.
	if *memLimit < 0 && cfg.Profile == "small" {
		*memLimit = 100
	}
	if *memLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(*memLimit) << 20)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	n, err := node.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "node %s serving on %s\n", cfg.ID, n.Addr())
	if a := n.RESPAddr(); a != "" {
		fmt.Fprintf(stdout, "node %s serves Redis clients on %s (map %q)\n", cfg.ID, a, cmp.Or(cfg.RESPMap, "redis"))
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-n.Fatal():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Shutdown(sctx); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// labelFlag collects repeated --label key=value flags.
type labelFlag struct{ m map[string]string }

func (l *labelFlag) String() string { return fmt.Sprint(l.m) }

func (l *labelFlag) Set(v string) error {
	m, err := node.ParseLabels(v)
	if err != nil {
		return err
	}
	if l.m == nil {
		l.m = map[string]string{}
	}
	for k, v := range m {
		l.m[k] = v
	}
	return nil
}

// runNodeOp drains, undrains or removes a node. A drain waits, with a
// progress bar, until no replica is left on the node (unless --no-wait).
func runNodeOp(ctx context.Context, op string, args []string, stdout, stderr io.Writer) error {
	var noWait bool
	return clientCommand(ctx, args, stderr, "node "+op, "node "+op+" NODE-ID [--no-wait] --addr ADDR", exactly(1),
		func(fs *flag.FlagSet) {
			if op == "drain" {
				fs.BoolVar(&noWait, "no-wait", false, "return once the drain is recorded, without waiting for the replicas to move")
				// A drain takes minutes: wait for it, not for the shared
				// request timeout (Ctrl-C stops watching; the drain goes on).
				longTimeout(fs, 24*time.Hour, "stop watching the drain after this long (it goes on)")
			}
		},
		func(ctx context.Context, cl *client.Client, pos []string) error {
			id := pos[0]
			var err error
			switch op {
			case "drain":
				err = cl.DrainNode(ctx, id)
			case "undrain":
				err = cl.UndrainNode(ctx, id)
			case "remove":
				err = cl.RemoveNode(ctx, id)
			}
			if err != nil {
				return err
			}
			if op != "drain" || noWait {
				fmt.Fprintf(stdout, "%s: %sed\n", id, strings.TrimSuffix(op, "e"))
				return nil
			}
			return waitDrained(ctx, cl, id, stdout)
		})
}

// waitDrained shows the replicas left on a draining node until none is.
func waitDrained(ctx context.Context, cl *client.Client, id string, w io.Writer) error {
	start := -1
	for {
		t, err := cl.Table(ctx)
		if err != nil && ctx.Err() != nil {
			fmt.Fprintln(w)
			return fmt.Errorf("stopped watching %s (the drain goes on; run the command again to watch): %w", id, ctx.Err())
		}
		if err != nil {
			return err
		}
		left := len(t.Hosts(id))
		if start < 0 {
			start = max(left, 1)
		}
		fmt.Fprintf(w, "\rdraining %s: %s %d of %d replicas moved", id, bar(start-left, start, 30), start-left, start)
		if left == 0 {
			fmt.Fprintf(w, "\n%s holds no replicas; retire it with: zerogrid node remove %s\n", id, id)
			return nil
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(w)
			return fmt.Errorf("stopped watching: %s still holds %d replicas (the drain goes on; run the command again to watch): %w", id, left, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// runNodes lists the nodes with their capabilities, state and load.
func runNodes(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var asJSON bool
	return clientCommand(ctx, args, stderr, "nodes", "nodes [--json] --addr ADDR", exactly(0),
		func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print the records as JSON") },
		func(ctx context.Context, cl *client.Client, _ []string) error {
			nodes, err := cl.Nodes(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(stdout, nodes)
			}
			tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tADDRESS\tSTATE\tARCH\tCORES\tCPU\tRAM\tDISK FREE\tFSYNC P99\tLABELS\tREPLICAS\tLEADS\tCPU%\tRSS\tSILENT")
			for _, n := range nodes {
				arch := n.Caps.Arch
				if n.Caps.GOARM != "" {
					arch += "v" + n.Caps.GOARM
				}
				var labels []string
				for k, v := range n.Caps.Labels {
					labels = append(labels, k+"="+v)
				}
				sort.Strings(labels)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%v\t%s\t%d\t%d\t%.0f\t%s\t%s\n",
					n.ID, n.Addr, n.State, arch, n.Caps.Cores, n.Caps.CPUScore, humanBytes(n.Caps.RAMTotal), humanBytes(n.Caps.DiskFree),
					n.Caps.FsyncP99.Round(time.Microsecond), strings.Join(labels, ","), n.Load.Replicas, n.Load.Leaders, n.Load.CPU,
					humanBytes(n.Load.RSS), (time.Duration(n.SilentMS) * time.Millisecond).Round(100*time.Millisecond))
			}
			return tw.Flush()
		})
}

// readSecret reads a secret from the first line of a file.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	if line = strings.TrimSpace(line); line == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return line, nil
}
